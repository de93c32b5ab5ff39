#!/usr/bin/env python3
"""Replay the Online Retail II demand trace through the proxy, time-compressed.

Every invoice line of data/online_retail/lines.csv.gz (ts,sku,country,quantity)
becomes `GET /inventory/{sku}?region=R` at its trace time; R is UK for the
United Kingdom and the Channel Islands, INTL otherwise (data/derive.py). The
trace has minute resolution: the lines of one minute are spread evenly over
it. One trace hour lasts 3600/speed real seconds; `--scale` multiplies the
request volume (each line is sent floor(scale) times, plus once more with
probability frac(scale); seeded).

    benches/replay/replay.py --start '2011-11-07' --days 1 --speed 3600
    benches/replay/replay.py --loop --speed 600 --max-rps 300      # what scripts/demo runs

Requests go out from `--workers` threads, each on its own keep-alive
connection (http.client). A request is never dropped: when the proxy (or
this client, or `--max-rps`) cannot keep up, requests go out late and the
lag is reported; the trace hour a request is counted in is always its
trace time. Only loopback targets; every run is bounded by
`--max-seconds` (and `--days` or `--loop`).

Used as a library by benches/replay/run.py (Replayer, read_trace).
"""

import argparse
import collections
import csv
import datetime as dt
import gzip
import http.client
import ipaddress
import queue
import random
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
LINES = ROOT / "data/online_retail/lines.csv.gz"
UK_COUNTRIES = {"United Kingdom", "Channel Islands"}
EPOCH = dt.datetime(1970, 1, 1)


def region_of(country):
    return "UK" if country in UK_COUNTRIES else "INTL"


def parse_time(s):
    """`YYYY-MM-DD[ HH:MM[:SS]]` (trace time, store-local) → datetime."""
    for f in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(s, f)
        except ValueError:
            pass
    raise ValueError(f"`{s}` is not YYYY-MM-DD[ HH:MM[:SS]]")


def pct(x):
    """A share as a percentage; "–" when nothing was counted."""
    return "–" if x != x else f"{x:.1%}"


def to_sec(t):
    return int((t - EPOCH).total_seconds())


def from_sec(s):
    return EPOCH + dt.timedelta(seconds=s)


def check_loopback(url):
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    ok = host == "localhost"
    try:
        ok = ok or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if u.scheme != "http" or not ok:
        raise SystemExit(f"replay: only http:// loopback targets (127.0.0.0/8, ::1, localhost), not {url}")
    return u.hostname, u.port or 80


def usable_sku(sku):
    # The proxy rejects keys with whitespace (400): the wrk mixes skip them too.
    return bool(sku) and not any(c.isspace() for c in sku)


def read_trace(start=None, end=None, path=LINES):
    """Yield (trace minute in epoch seconds, [(sku, region), ...]) per minute
    with lines, in order, for start <= ts < end."""
    s0 = to_sec(start) if start else None
    s1 = to_sec(end) if end else None
    cache = {}
    cur, batch = None, []
    with gzip.open(path, "rt", newline="") as f:
        r = csv.reader(f)
        next(r, None)
        for row in r:
            if len(row) < 3:
                continue
            ts = row[0]
            sec = cache.get(ts)
            if sec is None:
                if len(cache) > 100_000:
                    cache.clear()
                try:
                    sec = to_sec(parse_time(ts))
                except ValueError:
                    continue
                cache[ts] = sec
            if s0 is not None and sec < s0:
                continue
            if s1 is not None and sec >= s1:
                break  # the trace is in time order
            if sec != cur:
                if batch:
                    yield cur, batch
                cur, batch = sec, []
            batch.append((row[1], region_of(row[2])))
    if batch:
        yield cur, batch


class Stats:
    """Counters the workers add to (one per worker, summed by readers)."""

    __slots__ = ("sent", "ok", "non2xx", "errors", "hit", "miss", "lat_sum")

    def __init__(self):
        self.sent = self.ok = self.non2xx = self.errors = self.hit = self.miss = 0
        self.lat_sum = 0.0


class Replayer:
    """Send the trace between `start` and `end` through `base_url`.

    `record=True` keeps one tuple per request in `records`:
    (trace second, shard, cache "hit"/"miss"/"", latency ms, status; 0 = no
    response). `loop=True` starts over at `start` after `end` (or the
    trace's end) until stopped."""

    def __init__(self, base_url, start, end=None, speed=3600.0, scale=1.0, workers=16,
                 max_rps=2000.0, max_seconds=300.0, loop=False, record=True, seed=1,
                 timeout_s=10.0, path=LINES):
        self.host, self.port = check_loopback(base_url)
        if speed <= 0 or scale <= 0 or workers < 1 or max_rps <= 0:
            raise ValueError("speed, scale, max_rps must be positive; workers >= 1")
        self.start, self.end, self.speed, self.scale = start, end, speed, scale
        self.workers, self.max_rps, self.max_seconds = workers, max_rps, max_seconds
        self.loop, self.record, self.timeout_s, self.path = loop, record, timeout_s, path
        self.rng = random.Random(seed)
        self.stop_ev = threading.Event()
        self.q = queue.Queue(maxsize=workers * 8)
        self.stats = [Stats() for _ in range(workers)]
        self.records = [[] for _ in range(workers)]
        self.skipped = 0
        self.lag_s = 0.0        # how late the last request went out
        self.max_lag_s = 0.0
        self.trace_now = to_sec(start)  # trace time of the latest dispatched request
        self.trace_sent = to_sec(start)  # ... and of the latest answered one
        self.t0 = None
        self.done = threading.Event()

    # -- dispatch --------------------------------------------------------
    def _lap(self):
        """The slice's minutes; the first one is read before it is returned,
        so skipping to --start (seconds of gzip) happens before the clock runs."""
        it = read_trace(self.start, self.end, self.path)
        first = next(it, None)
        if first is None:
            return iter(())

        def chain():
            yield first
            yield from it

        return chain()

    def _dispatch(self, lap):
        gap = 1.0 / self.max_rps
        next_free = 0.0
        base = to_sec(self.start)
        offset = 0.0  # real seconds added per loop
        try:
            while not self.stop_ev.is_set():
                sent_any = False
                for minute, lines in lap:
                    items = []
                    for sku, region in lines:
                        if not usable_sku(sku):
                            self.skipped += 1
                            continue
                        n = int(self.scale) + (1 if self.rng.random() < self.scale % 1 else 0)
                        items.extend([(sku, region)] * n)
                    for i, (sku, region) in enumerate(items):
                        tsec = minute + 60.0 * (i + 0.5) / len(items)
                        due = offset + (tsec - base) / self.speed
                        due = max(due, next_free)
                        next_free = due + gap
                        if due > self.max_seconds:
                            return  # beyond the time bound
                        path = f"/inventory/{urllib.parse.quote(sku, safe='')}?region={region}"
                        while not self.stop_ev.is_set():
                            try:
                                self.q.put((due, tsec, path), timeout=0.2)
                                break
                            except queue.Full:
                                continue
                        if self.stop_ev.is_set():
                            return
                        self.trace_now = tsec
                        sent_any = True
                if not self.loop or not sent_any:
                    return
                lap = self._lap()
                # Next lap: the trace starts over where the last one ended.
                end_sec = to_sec(self.end) if self.end else self.trace_now
                offset += (end_sec - base) / self.speed
        finally:
            for _ in range(self.workers):
                try:
                    self.q.put(None, timeout=1)
                except queue.Full:
                    pass

    # -- send ------------------------------------------------------------
    def _worker(self, k):
        st, rec = self.stats[k], self.records[k]
        conn = None
        while not self.stop_ev.is_set():
            try:
                item = self.q.get(timeout=0.5)
            except queue.Empty:
                if self.done.is_set():
                    break
                continue
            if item is None:
                break
            due, tsec, path = item
            wait = self.t0 + due - time.monotonic()
            if wait > 0:
                if self.stop_ev.wait(wait):
                    break
            else:
                self.lag_s = -wait if -wait > 0.05 else 0.0
                if -wait > self.max_lag_s:
                    self.max_lag_s = -wait
            t = time.monotonic()
            status, shard, cache = 0, "", ""
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                conn.request("GET", path, headers={"Accept": "application/json"})
                r = conn.getresponse()
                r.read()
                status = r.status
                shard = r.getheader("x-shardcast-shard", "") or ""
                cache = r.getheader("x-cache", "") or ""
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            ms = (time.monotonic() - t) * 1000.0
            st.sent += 1
            st.lat_sum += ms
            if status == 0:
                st.errors += 1
            elif 200 <= status < 300:
                st.ok += 1
            else:
                st.non2xx += 1
            if cache == "hit":
                st.hit += 1
            elif cache == "miss":
                st.miss += 1
            if self.record:
                rec.append((tsec, shard, cache, ms, status))
            self.trace_sent = tsec
        if conn is not None:
            conn.close()

    # -- run -------------------------------------------------------------
    def totals(self):
        t = Stats()
        for s in self.stats:
            for f in Stats.__slots__:
                setattr(t, f, getattr(t, f) + getattr(s, f))
        return t

    def run(self, progress_s=5.0, label="replay", out=sys.stderr, trace_now=None):
        """Replay until the slice ends, `max_seconds` pass, or stop().

        `trace_now`, when given, is called once the slice is open and returns
        the trace time (seconds) another clock reads now — the forecaster's
        replay clock — so requests go out when that clock reaches them."""
        lap = self._lap()
        self.t0 = time.monotonic() + 0.2
        if trace_now is not None:
            now_s = trace_now()
            if now_s is not None:
                self.t0 = time.monotonic() + (to_sec(self.start) - now_s) / self.speed
        threads = [threading.Thread(target=self._worker, args=(k,), daemon=True)
                   for k in range(self.workers)]
        disp = threading.Thread(target=self._dispatch, args=(lap,), daemon=True)
        for t in threads:
            t.start()
        disp.start()
        last_t, last = time.monotonic(), Stats()
        deadline = self.t0 + self.max_seconds
        while disp.is_alive() or any(t.is_alive() for t in threads):
            if time.monotonic() > deadline:
                self.stop()
            time.sleep(min(progress_s, 0.5) if progress_s else 0.5)
            now = time.monotonic()
            if progress_s and now - last_t >= progress_s:
                cur = self.totals()
                print(self.line(label, cur, last, now - last_t), file=out, flush=True)
                last_t, last = now, cur
            if not disp.is_alive():
                self.done.set()
        for t in threads:
            t.join(timeout=self.timeout_s + 1)
        return self.totals()

    def line(self, label, cur, last, dt_s):
        d_sent = cur.sent - last.sent
        d_hm = (cur.hit - last.hit) + (cur.miss - last.miss)
        hit_w = (cur.hit - last.hit) / d_hm if d_hm else float("nan")
        hm = cur.hit + cur.miss
        hit = cur.hit / hm if hm else float("nan")
        trace = from_sec(int(self.trace_sent)).strftime("%Y-%m-%d %H:%M")
        return (f"{label}: {time.monotonic() - self.t0:6.0f}s  trace {trace}  requests {cur.sent:,} "
                f"({d_sent / dt_s:.0f}/s)  non-2xx {cur.non2xx}  errors {cur.errors}  "
                f"x-cache hit {pct(hit)} (last {dt_s:.0f}s {pct(hit_w)})  lag {self.lag_s:.1f}s")

    def stop(self):
        self.stop_ev.set()

    def all_records(self):
        return [r for rs in self.records for r in rs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the proxy (loopback only)")
    ap.add_argument("--start", default="2011-11-07", help="trace time to start at (default 2011-11-07)")
    ap.add_argument("--days", type=float, default=0, help="trace days to replay (0: to the trace's end)")
    ap.add_argument("--speed", type=float, default=3600.0, help="trace seconds per real second")
    ap.add_argument("--scale", type=float, default=1.0, help="requests per invoice line")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--max-rps", type=float, default=2000.0, help="send at most this many requests/s")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="stop after this many real seconds (bound; the demo passes a day)")
    ap.add_argument("--loop", action="store_true", help="start over at --start after the slice")
    ap.add_argument("--every", type=float, default=5.0, help="print a summary line every S seconds")
    a = ap.parse_args()
    start = parse_time(a.start)
    end = start + dt.timedelta(days=a.days) if a.days else None
    rp = Replayer(a.url, start, end, speed=a.speed, scale=a.scale, workers=a.workers,
                  max_rps=a.max_rps, max_seconds=a.max_seconds, loop=a.loop, record=False)

    def on_signal(_s, _f):
        rp.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"replay: {a.url}  trace from {start:%Y-%m-%d %H:%M}"
          f"{f' for {a.days:g} days' if a.days else ''}, {a.speed:g} trace s per s "
          f"(1 trace hour = {3600 / a.speed:.2f} s), scale {a.scale:g}, <= {a.max_rps:g} req/s"
          f"{', looping' if a.loop else ''}", file=sys.stderr, flush=True)
    t = rp.run(progress_s=a.every)
    hm = t.hit + t.miss
    print(f"replay: done: {t.sent:,} requests, {t.ok:,} 2xx, {t.non2xx} non-2xx, {t.errors} errors, "
          f"x-cache hit {t.hit / hm if hm else float('nan'):.1%}, skipped {rp.skipped} lines "
          f"(skus the proxy rejects), max lag {rp.max_lag_s:.1f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
