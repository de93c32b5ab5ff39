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
    benches/replay/replay.py --loop --speed 600 --max-rps 300 \
        --forecaster http://127.0.0.1:9300                        # what scripts/demo runs

Requests go out from `--workers` threads, each on its own keep-alive
connection (http.client). A request is never dropped: when the proxy (or
this client, or `--max-rps`) cannot keep up, requests go out late and the
lag is reported; the trace hour a request is counted in is always its
trace time. Only loopback targets; every run is bounded by
`--max-seconds` (and `--days` or `--loop`).

`--forecaster URL` replays on the forecaster's replay clock (its `GET
/clock`; scripts/stack --clock-start starts one): the replay begins where
that clock is now and each line goes out when the clock reaches its trace
time, so requests, telemetry, forecasts and the manager's plans share one
timeline. The summary line then also shows the forecaster's clock and the
manager's pre-fetches (`GET /manager`: how many each reason drove, how
many replicas were warm before their shard's rise). A forecaster on the
wall clock is refused.

`--loop` starts over after the slice. Without `--days` a lap is the whole
weeks from `--start` that the trace holds (at least one), so a replay clock
that keeps running is on the same weekday and hour when the trace starts
over: lap k replays trace time t at clock time t + k laps.

Used as a library by benches/replay/run.py (Replayer, read_trace, clock_now,
clock_begin).
"""

import argparse
import collections
import csv
import datetime as dt
import gzip
import http.client
import ipaddress
import itertools
import json
import queue
import random
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request
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


WEEK_S = 7 * 86_400


def trace_last(path=LINES):
    """The trace time (epoch seconds) of the trace's last line."""
    last = None
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.reader(f):
            if row:
                last = row[0]
    return to_sec(parse_time(last))


def whole_weeks(start, path=LINES):
    """The end of the whole weeks from `start` that the trace holds (at
    least one): a loop of them keeps weekday and hour."""
    weeks = max(1, (trace_last(path) + 60 - to_sec(start)) // WEEK_S)
    return from_sec(to_sec(start) + weeks * WEEK_S)


def clock_now(forecaster, timeout=2.0):
    """The forecaster's replay clock now, in trace seconds (store-local, as
    the trace's timestamps); None when it runs on the wall clock or does
    not answer."""
    try:
        with urllib.request.urlopen(forecaster.rstrip("/") + "/clock", timeout=timeout) as r:
            c = json.loads(r.read())
        if not c.get("replay"):
            return None
        return to_sec(parse_time(c["now"])) + (int(c["now_unix_ms"]) % 1000) / 1000
    except (OSError, ValueError, KeyError, TypeError):
        return None


def models_down(forecaster, timeout_s=120.0):
    """Why the forecaster is not serving its models, or None when every
    model it reports is loaded. Waits (bounded) for the first report: the
    gauge appears after the first planning cycle. A forecaster on its
    seasonal-naive fallback (no ONNX Runtime found, say) is another system
    to measure."""
    deadline, loaded = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(forecaster.rstrip("/") + "/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            text = ""
        loaded = {}
        for line in text.splitlines():
            if line.startswith("shardcast_forecaster_model_loaded{"):
                k, _, v = line.rpartition(" ")
                loaded[k] = float(v)
        if loaded:
            break
        time.sleep(1)
    if not loaded:
        return "the forecaster reported no model"
    down = [k for k, v in loaded.items() if not v]
    return ("models not loaded: " + ", ".join(down)) if down else None


def clock_begin(forecaster, speed, lead_s=0.5):
    """Where a replay on the forecaster's clock begins: its trace time
    `lead_s` real seconds from now (the slice is opened meanwhile); None
    without a replay clock."""
    now = clock_now(forecaster)
    return None if now is None else now + lead_s * speed


def manager_status(forecaster, timeout=2.0):
    """The manager's pre-fetches as a summary-line field, or why not."""
    try:
        with urllib.request.urlopen(forecaster.rstrip("/") + "/manager", timeout=timeout) as r:
            p = json.loads(r.read())["prefetch"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"manager: {type(e).__name__}"
    by = p.get("by_reason") or {}
    other = sum(v for k, v in by.items() if k not in ("forecast", "load"))
    return (f"pre-fetches forecast {by.get('forecast', 0)} load {by.get('load', 0)} other {other}  "
            f"warm before rise {p['warm_before_rise']} (after {p['warm_after_rise']}, "
            f"no rise {p['no_rise']}; rises {p['rises']}, {p['rises_met_warm']} met warm)")


def read_trace(start=None, end=None, path=LINES):
    """Yield (trace minute in epoch seconds, [(sku, region), ...]) per minute
    with lines, in order, for start <= ts < end."""
    s0 = to_sec(start) if start else None
    s1 = to_sec(end) if end else None
    # ISO times sort as text: rows before the start are passed over unparsed.
    before = start.strftime("%Y-%m-%d %H:%M") if start else ""
    cache = {}
    cur, batch = None, []
    with gzip.open(path, "rt", newline="") as f:
        f.readline()
        first = next((line for line in f if line[:16] >= before), None)
        if first is None:
            return
        for row in csv.reader(itertools.chain([first], f)):
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

    __slots__ = ("sent", "ok", "non2xx", "errors", "hit", "miss", "lat_sum", "resent")

    def __init__(self):
        self.sent = self.ok = self.non2xx = self.errors = self.hit = self.miss = 0
        # requests sent again after the server had closed an idle connection
        self.resent = 0
        self.lat_sum = 0.0


class Replayer:
    """Send the trace between `start` and `end` through `base_url`.

    `record=True` keeps one tuple per request in `records`:
    (trace second, shard, cache "hit"/"miss"/"", latency ms, status; 0 = no
    response). `loop=True` starts over at `start` after `end` (or the
    trace's end) until stopped. `begin` (trace seconds on the timeline of
    `start`, laps included) is where the first lap begins, `start` when
    not given: lap k replays trace time t at timeline time t + k laps."""

    def __init__(self, base_url, start, end=None, speed=3600.0, scale=1.0, workers=16,
                 max_rps=2000.0, max_seconds=300.0, loop=False, record=True, seed=1,
                 timeout_s=10.0, path=LINES, begin=None):
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
        # Requests that failed (no response or 5xx), for the report:
        # (trace second, path, status, shard, x-cache, first bytes of the body).
        self.failures = []
        self.skipped = 0
        self.passed = 0  # lines the clock passed while the slice opened
        self.resume_at = 0
        self.lag_s = 0.0        # how late the last request went out
        self.max_lag_s = 0.0
        self.trace_now = to_sec(start)  # trace time of the latest dispatched request
        base = to_sec(start)
        # A loop with an end has a fixed lap; `begin` falls in lap `lap`.
        self.period = to_sec(end) - base if loop and end else None
        rel = max(0.0, (begin if begin is not None else base) - base)
        if self.period:
            self.lap, pos = divmod(rel, self.period)
            self.lap = int(self.lap)
        else:
            self.lap, pos = 0, rel
        self.first = from_sec(int(base + pos))  # where the first lap reads from
        self.t0 = None  # real (monotonic) time of the timeline's `start`
        self.m0 = None  # ... of the run's start
        self.clock = self.status = None
        self.done = threading.Event()

    # -- dispatch --------------------------------------------------------
    def _lap(self, start=None):
        """The slice's minutes from `start` (the slice's start by default);
        the first one is read before it is returned, so skipping to it
        (seconds of gzip) happens before the clock runs."""
        it = read_trace(start or self.start, self.end, self.path)
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
        offset = self.lap * (self.period or 0) / self.speed  # real seconds added per loop
        resume_at = self.resume_at
        try:
            while not self.stop_ev.is_set():
                if self.loop:
                    # Open the next lap meanwhile (skipping to its start
                    # takes seconds), so it starts on time.
                    nxt = {}
                    opener = threading.Thread(target=lambda: nxt.update(lap=self._lap()),
                                              daemon=True)
                    opener.start()
                sent_any = False
                for minute, lines in lap:
                    if minute + 60 <= resume_at:
                        self.passed += len(lines)
                        continue
                    items = []
                    for sku, region in lines:
                        if not usable_sku(sku):
                            self.skipped += 1
                            continue
                        n = int(self.scale) + (1 if self.rng.random() < self.scale % 1 else 0)
                        items.extend([(sku, region)] * n)
                    for i, (sku, region) in enumerate(items):
                        tsec = minute + 60.0 * (i + 0.5) / len(items)
                        if tsec < resume_at:
                            self.passed += 1
                            continue
                        due = offset + (tsec - base) / self.speed
                        due = max(due, next_free)
                        next_free = due + gap
                        if self.t0 + due > self.m0 + self.max_seconds:
                            # Beyond the time bound: the run ends at it.
                            self.stop_ev.wait(max(0.0, self.m0 + self.max_seconds - time.monotonic()))
                            return
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
                opener.join()
                lap = nxt.get("lap") or iter(())
                resume_at = 0
                # Next lap: the trace starts over where the last one ended.
                end_sec = to_sec(self.end) if self.end else self.trace_now
                offset += (end_sec - base) / self.speed
                self.lap += 1
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
            status, shard, cache, body = 0, "", "", b""
            # A keep-alive connection the server closed while it idled (the
            # proxy's client keep-alive deadline, 10 s by default: a closed
            # store's night or weekend at replay speed) fails the next
            # request before any response. A GET is idempotent: it is sent
            # again, once, on a new connection, as browsers and HTTP client
            # pools do (RFC 9112, 9.3.1); a new connection is never retried.
            for attempt in (0, 1):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                    conn.request("GET", path, headers={"Accept": "application/json"})
                    r = conn.getresponse()
                    body = r.read()
                    status = r.status
                    shard = r.getheader("x-shardcast-shard", "") or ""
                    cache = r.getheader("x-cache", "") or ""
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException) as e:
                    if conn is not None:
                        conn.close()
                    conn = None
                    stale = isinstance(e, (ConnectionResetError, BrokenPipeError,
                                           http.client.RemoteDisconnected))
                    if not (stale and reused and attempt == 0):
                        break
                    st.resent += 1
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
            if (status == 0 or status >= 500) and len(self.failures) < 1000:
                self.failures.append((tsec, path, status, shard, cache,
                                      body[:300].decode("utf-8", "replace")))
        if conn is not None:
            conn.close()

    # -- run -------------------------------------------------------------
    def totals(self):
        t = Stats()
        for s in self.stats:
            for f in Stats.__slots__:
                setattr(t, f, getattr(t, f) + getattr(s, f))
        return t

    def run(self, progress_s=5.0, label="replay", out=sys.stderr, trace_now=None, status=None):
        """Replay until the slice ends, `max_seconds` pass, or stop().

        `trace_now`, when given, is called once the slice is open and returns
        the trace time (seconds) another clock reads now — the forecaster's
        replay clock — so requests go out when that clock reaches them; the
        summary line then shows that clock too. `status`, when given,
        returns more text for the summary line."""
        lap = self._lap(self.first)
        base = to_sec(self.start)
        m0 = time.monotonic()
        now_s = trace_now() if trace_now is not None else None
        if now_s is None:
            # Our own timeline: `begin` a moment from now.
            now_s = base + self.lap * (self.period or 0) + (to_sec(self.first) - base) - 0.2 * self.speed
        self.t0 = m0 + (base - now_s) / self.speed
        self.m0 = m0
        # Opening the slice took a while: lines the clock has passed since
        # are not sent (a burst of them would be all late).
        self.resume_at = now_s - self.lap * (self.period or 0)
        self.clock = trace_now
        self.status = status
        threads = [threading.Thread(target=self._worker, args=(k,), daemon=True)
                   for k in range(self.workers)]
        disp = threading.Thread(target=self._dispatch, args=(lap,), daemon=True)
        for t in threads:
            t.start()
        disp.start()
        last_t, last = time.monotonic(), Stats()
        deadline = m0 + self.max_seconds
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

    def timeline_now(self):
        """Where the replay's timeline is now (trace seconds, laps included)."""
        return to_sec(self.start) + (time.monotonic() - self.t0) * self.speed

    def in_lap(self, t):
        """A timeline time as trace time within its lap, and the lap."""
        base = to_sec(self.start)
        if not self.period:
            return t, 0
        k, pos = divmod(t - base, self.period)
        return base + pos, int(k)

    def line(self, label, cur, last, dt_s):
        d_sent = cur.sent - last.sent
        d_hm = (cur.hit - last.hit) + (cur.miss - last.miss)
        hit_w = (cur.hit - last.hit) / d_hm if d_hm else float("nan")
        hm = cur.hit + cur.miss
        hit = cur.hit / hm if hm else float("nan")
        t, k = self.in_lap(self.timeline_now())
        trace = from_sec(int(t)).strftime("%Y-%m-%d %H:%M") + (f" (lap {k + 1})" if k else "")
        clock = ""
        if self.clock is not None:
            c = self.clock()
            clock = "  forecaster " + ("–" if c is None else from_sec(int(c)).strftime("%Y-%m-%d %H:%M"))
        more = f"  {self.status()}" if self.status is not None else ""
        return (f"{label}: {time.monotonic() - self.m0:6.0f}s  trace {trace}{clock}  requests {cur.sent:,} "
                f"({d_sent / dt_s:.0f}/s)  non-2xx {cur.non2xx}  errors {cur.errors}  "
                f"x-cache hit {pct(hit)} (last {dt_s:.0f}s {pct(hit_w)})  lag {self.lag_s:.1f}s{more}")

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
    ap.add_argument("--loop", action="store_true",
                    help="start over at --start after the slice (without --days: after the "
                         "whole weeks the trace holds)")
    ap.add_argument("--forecaster", metavar="URL",
                    help="replay on this forecaster's replay clock (GET /clock), and show its "
                         "manager's pre-fetches in the summary line")
    ap.add_argument("--every", type=float, default=5.0, help="print a summary line every S seconds")
    a = ap.parse_args()
    start = parse_time(a.start)
    end = start + dt.timedelta(days=a.days) if a.days else None
    if a.loop and end is None:
        end = whole_weeks(start)
    begin = trace_now = status = None
    if a.forecaster:
        begin = clock_begin(a.forecaster, a.speed)
        if begin is None:
            raise SystemExit(f"replay: {a.forecaster}/clock is not a replay clock (or does not "
                             "answer): start the forecaster with [clock] start and speed "
                             "(scripts/stack --clock-start TIME --clock-speed X)")
        if begin < to_sec(start):
            raise SystemExit(f"replay: the forecaster's clock ({from_sec(int(begin)):%Y-%m-%d %H:%M}) "
                             f"is before --start {start:%Y-%m-%d %H:%M}")
        trace_now = lambda: clock_now(a.forecaster)  # noqa: E731
        status = lambda: manager_status(a.forecaster)  # noqa: E731
    rp = Replayer(a.url, start, end, speed=a.speed, scale=a.scale, workers=a.workers,
                  max_rps=a.max_rps, max_seconds=a.max_seconds, loop=a.loop, record=False,
                  begin=begin)

    def on_signal(_s, _f):
        rp.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lap = f", looping every {(to_sec(end) - to_sec(start)) / 86400:g} days" if a.loop else ""
    on_clock = (f", on the forecaster's clock from {rp.first:%Y-%m-%d %H:%M}"
                if a.forecaster else "")
    print(f"replay: {a.url}  trace from {start:%Y-%m-%d %H:%M}"
          f"{f' for {a.days:g} days' if a.days else ''}, {a.speed:g} trace s per s "
          f"(1 trace hour = {3600 / a.speed:.2f} s), scale {a.scale:g}, <= {a.max_rps:g} req/s"
          f"{lap}{on_clock}", file=sys.stderr, flush=True)
    t = rp.run(progress_s=a.every, trace_now=trace_now, status=status)
    hm = t.hit + t.miss
    print(f"replay: done: {t.sent:,} requests, {t.ok:,} 2xx, {t.non2xx} non-2xx, {t.errors} errors, "
          f"x-cache hit {t.hit / hm if hm else float('nan'):.1%}, skipped {rp.skipped} lines "
          f"(skus the proxy rejects) and {rp.passed} the clock passed while the trace opened, "
          f"max lag {rp.max_lag_s:.1f}s{f'; {status()}' if status else ''}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
