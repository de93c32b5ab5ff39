"""The replayer's timing against a clock, without the stack: a loopback
server that answers every request stands in for the proxy. The replay
begins where the clock is, mid-lap, sends each line when the clock
reaches its trace time, and starts over after a whole lap so lap k sends
trace time t at clock time t + k laps."""

import http.server
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import replay  # noqa: E402


class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arrivals = []

    def do_GET(self):  # noqa: N802 — the stdlib's name
        Answer.arrivals.append(time.monotonic())
        self.send_response(200)
        self.send_header("content-length", "0")
        self.send_header("x-cache", "hit")
        self.end_headers()

    def log_message(self, *_):
        pass


def test_a_looping_replay_follows_the_clock_across_laps():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        # A lap of four trace hours in 8 s: long enough to open the next
        # lap meanwhile (seconds of gzip on a busy machine).
        speed, lap_h = 1800.0, 4
        start = replay.parse_time("2011-11-07 08:00")
        end = replay.parse_time("2011-11-07 12:00")
        base, period = replay.to_sec(start), lap_h * 3600
        # The clock is half an hour into the second lap when the replay
        # asks it first (it runs from then on).
        c0, m0 = base + period + 1800, []

        def clock(at=None):
            m0[:] = m0 or [time.monotonic()]
            return c0 + ((time.monotonic() if at is None else at) - m0[0]) * speed

        rp = replay.Replayer(f"http://127.0.0.1:{srv.server_port}", start, end, speed=speed,
                             workers=1, max_rps=1000, max_seconds=10, loop=True,
                             begin=c0 + 0.4 * speed)
        assert (rp.lap, rp.first) == (1, replay.parse_time("2011-11-07 08:42"))
        rp.run(progress_s=0, trace_now=clock)
    finally:
        srv.shutdown()
    recs = rp.all_records()
    assert len(recs) == len(Answer.arrivals) > 50
    # One worker: the records are in the order the server saw them.
    wrapped = False
    for (tsec, _, cache, _, status), at in zip(recs, Answer.arrivals):
        assert status == 200 and cache == "hit"
        k = 1 if not wrapped and tsec >= base + 2520 else 2
        wrapped = wrapped or k == 2
        # Sent when the clock reached the line's time in its lap (a line
        # goes out a little late on a busy machine, never early; a lap is
        # four trace hours).
        late = clock(at) - (tsec + k * period)
        assert -0.05 * speed <= late <= 0.5 * speed, (replay.from_sec(int(tsec)), k, late)
    assert wrapped, "the replay never started over"
    t, lap = rp.in_lap(clock())
    assert lap >= 2 and base <= t < base + period


class IdleClosing(Answer):
    """A keep-alive server that closes a connection idle for 0.3 s, as the
    proxy closes one idle for its client keep-alive deadline."""

    timeout = 0.3


def test_a_keepalive_connection_closed_while_idle_costs_no_request():
    """A night of the trace at replay speed outlasts the server's idle
    deadline on every worker's connection: the first request after it must
    not fail (before the fix: one failure per worker, no response)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IdleClosing)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        # Monday evening to Tuesday morning at 10 trace hours a second: the
        # night is about a real second, three idle deadlines.
        start = replay.parse_time("2011-11-07 17:00")
        end = replay.parse_time("2011-11-08 09:00")
        rp = replay.Replayer(f"http://127.0.0.1:{srv.server_port}", start, end, speed=36000.0,
                             workers=4, max_rps=2000, max_seconds=20)
        tot = rp.run(progress_s=0)
    finally:
        srv.shutdown()
    recs = rp.all_records()
    assert len(recs) > 50 and tot.sent == len(recs)
    failed = [r for r in recs if r[4] != 200]
    assert not failed, f"{len(failed)} requests failed after the idle close: {failed[:5]}"
    assert tot.resent >= 1, "the night did not outlast the idle deadline: the test tests nothing"


def test_a_hosted_copy_is_charged_to_where_it_stands_against_its_spikes():
    # The bench's harness, by path: other benches have a `run.py` of their
    # own, and a plain `import run` gets whichever one a test loaded first.
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("replay_run", HERE / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)

    spikes = {10 * 3600, 11 * 3600}
    at = lambda h, m=30: h * 3600 + m * 60  # noqa: E731
    assert run.copy_when(spikes, at(10)) == "spike"
    assert run.copy_when(spikes, at(11, 59)) == "spike"
    assert run.copy_when(spikes, at(9)) == "hour_before"
    assert run.copy_when(spikes, at(12, 0)) == "hour_after"
    assert run.copy_when(spikes, at(8)) == "other"
    assert run.copy_when(spikes, at(13)) == "other"
    assert run.copy_when((), at(10)) == "other"
