"""What the benchmark scripts under benches/ share: loopback ports and the
origin nodes (one nginx worker serving N node ports with a fixed body)."""
import random
import socket
import time
from pathlib import Path


def _stack():
    # scripts/stack is a script (no .py), loaded once as a module.
    import importlib.machinery
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts/stack"
    loader = importlib.machinery.SourceFileLoader("shardcast_stack", str(path))
    spec = importlib.util.spec_from_loader("shardcast_stack", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


# One port picker for the stack and the benches: below the kernel's
# ephemeral range, never the same port twice in one run.
free_port = _stack().free_port


def wait_port(port, timeout=15):
    """Wait until something accepts on the loopback `port`."""
    t = time.time() + timeout
    while time.time() < t:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def origin_conf(tmp: Path, ports, body='{{"node":{i},"stock":12}}'):
    """nginx config for origin nodes on `ports` (`/health` 200, everything
    else 200 with `x-cache: hit` and `body`, `{i}` the node's index).
    Returns the config's path; run it with `nginx -c PATH -p tmp`."""
    servers = "\n".join(
        f"""server {{ listen 127.0.0.1:{p} backlog=4096 reuseport; keepalive_requests 1000000;
             location /health {{ return 200 "ok"; }}
             location / {{ add_header x-cache hit; return 200 '{body.format(i=i)}'; }} }}"""
        for i, p in enumerate(ports))
    path = tmp / "origin.conf"
    path.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/origin.pid; error_log {tmp}/origin.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 16384; }}
http {{ access_log off; {servers} }}""")
    return path


# --- the instruction-count job (benches/callgrind, benches/peers --callgrind) ---
#
# GET /inventory/{sku}, a random sku out of SKUS per request, four upstream
# nodes, one worker thread, keep-alive on both sides; WARMUP requests, then
# callgrind's counters are zeroed and exactly REQUESTS requests are counted
# over CONNECTIONS connections. Instruction counts repeat within 1 % where
# CPU time on this shared machine moves by 2x.

SKUS = 100_000
CATEGORIES = 4


def uris_file(path: Path, port, n, seed=7):
    """`n` request URIs for h2load, the same sku sequence for every port."""
    import random
    rng = random.Random(seed)
    path.write_text("".join(f"http://127.0.0.1:{port}/inventory/S{rng.randrange(SKUS)}\n"
                            for _ in range(n)))
    return path


def catalog_csv(tmp: Path):
    """A catalog of every sku the job asks for, spread over the four
    categories (one shard each): the request path does a real lookup."""
    path = tmp / "catalog.csv"
    if not path.exists():
        path.write_text("sku,category\n" + "".join(f"S{i},C{i % CATEGORIES}\n" for i in range(SKUS)))
    return path


def shardcast_conf(tmp: Path, port, admin, node_ports, threads=1, catalog=True, rf=2):
    """shardcast with every request-path feature on: catalog lookup, rf
    replicas per shard chosen by P2C, retries within the default budget,
    active health checks, telemetry to a file every second, the edge's
    deadlines and framing checks (always on). Response headers off, as the
    peers add none."""
    nodes = "\n".join(f'[[nodes]]\nname = "n{i}"\naddress = "127.0.0.1:{p}"\ncapacity = 100\n'
                      for i, p in enumerate(node_ports))
    shards = "".join(f'[[shards]]\nid = "s{i}"\ncategories = ["C{i}"]\nregions = ["UK"]\n'
                     for i in range(CATEGORIES))
    cat = f'[catalog]\ncsv = "{catalog_csv(tmp)}"\n' if catalog else ""
    path = tmp / f"shardcast-{port}.toml"
    path.write_text(f"""
replication_factor = {rf}
[listen]
http = ["127.0.0.1:{port}"]
admin = "127.0.0.1:{admin}"
threads = {threads}
{nodes}
{shards}
[[routes]]
name = "inventory"
path = "/inventory/{{sku}}"
default_region = "UK"
{cat}
[telemetry]
sink = "file:{tmp}/telemetry-{port}.jsonl"
interval_s = 1
""")
    return path


def nginx_proxy_conf(tmp: Path, port, node_ports, workers=1, h2c_port=None):
    """nginx routing by sku (consistent hash) over keep-alive upstreams;
    `h2c_port`: also listen there for cleartext HTTP/2 (prior knowledge)."""
    ups = "\n".join(f"server 127.0.0.1:{p};" for p in node_ports)
    path = tmp / f"nginx-{port}.conf"
    path.write_text(f"""
worker_processes {workers}; daemon off; pid {tmp}/nginx-{port}.pid; error_log {tmp}/nginx-{port}.err;
{"master_process off;" if workers == 1 else ""}
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream nodes {{ hash $sku consistent; {ups} keepalive 128; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096; keepalive_requests 1000000;
    {f"listen 127.0.0.1:{h2c_port} http2 backlog=4096; http2_max_requests 1000000;" if h2c_port else ""}
    location ~ ^/inventory/(?<sku>[^/?]+) {{
      proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection "";
    }}
  }}
}}""")
    return path


def haproxy_conf(tmp: Path, port, node_ports, threads=1, h2c_port=None):
    """HAProxy routing by the path's sku segment (consistent hash);
    `h2c_port`: also bind there for cleartext HTTP/2 (prior knowledge)."""
    srv = "\n".join(f"  server n{i} 127.0.0.1:{p}" for i, p in enumerate(node_ports))
    path = tmp / f"haproxy-{port}.cfg"
    path.write_text(f"""
global
  nbthread {threads}
  tune.bufsize 16384
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  {f"bind 127.0.0.1:{h2c_port} proto h2" if h2c_port else ""}
  default_backend nodes
backend nodes
  balance hash path,field(3,/)
  hash-type consistent
  default-server pool-purge-delay 60s
{srv}
""")
    return path


def h2load(port, n, conns, uris):
    """`n` HTTP/1.1 requests over `conns` keep-alive connections (one in
    flight each) from the URIs in `uris`; returns (succeeded, failed)."""
    import re
    import subprocess
    out = subprocess.run(
        ["h2load", "--h1", "-n", str(n), "-c", str(conns), "-m", "1", "-i", str(uris)],
        capture_output=True, text=True, timeout=600,
    ).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if not m:
        raise SystemExit(f"h2load: {out}")
    return int(m.group(4)), int(m.group(5))


# shardcast's supervised background loops (telemetry export, dashboard
# ticks, health checks, reload watch): their work is per second, so under
# valgrind (~50x slower) it lands on few requests and grows with the run's
# wall time; reported apart so builds compare on the request path.
SHARDCAST_BACKGROUND = "supervise.rs:shardcast_edge::supervise::Tasks::spawn::{{closure}}::{{closure}}"


def inclusive_cost(profile, needle):
    """The largest inclusive cost of a function whose name contains
    `needle` in a callgrind profile (0 when none)."""
    import re
    import subprocess
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no",
                          str(profile)], capture_output=True, text=True).stdout
    best = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(", line)
        if m and needle in line:
            best = max(best, int(m.group(1).replace(",", "")))
    return best


def callgrind_count(argv, port, uris, out: Path, warmup=1000, requests=10000, connections=16,
                    keep=None, env=None, log=None, background=None):
    """Run `argv` (a proxy listening on `port`) under callgrind: `warmup`
    requests, zero the counters, exactly `requests` requests, dump.
    Returns (succeeded, failed, user-space instructions counted, of which
    in `background`): the instructions summed over every thread of the
    process; `background` names a function (see `inclusive_cost`) whose
    inclusive cost is reported apart (0 when not given)."""
    import glob
    import os
    import shutil
    import subprocess
    vg = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no", *argv],
        stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL,
        env=dict(os.environ, RUST_LOG="warn", **(env or {})))
    try:
        wait_port(port, 120)
        h2load(port, warmup, connections, uris)
        subprocess.run(["callgrind_control", "-z", str(vg.pid)], check=True, capture_output=True)
        ok, failed = h2load(port, requests, connections, uris)
        subprocess.run(["callgrind_control", "-d", str(vg.pid)], check=True, capture_output=True)
    finally:
        vg.terminate()
        try:
            vg.wait(60)
        except subprocess.TimeoutExpired:
            vg.kill()
            vg.wait()
    # The dump after zeroing holds the counted requests (part 1, the
    # "totals:" line); the final dump at exit the shutdown only.
    total = bg = 0
    for f in glob.glob(f"{out}.*.1"):
        for line in open(f):
            if line.startswith("totals:") or line.startswith("summary:"):
                total = max(total, int(line.split()[1]))
        if background:
            bg = max(bg, inclusive_cost(f, background))
    if keep:
        os.makedirs(keep, exist_ok=True)
        for f in glob.glob(f"{out}.*"):
            shutil.copy(f, keep)
    return ok, failed, total, bg
