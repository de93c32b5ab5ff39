"""What the benchmark scripts under benches/ share: loopback ports and the
origin nodes (one nginx worker serving N node ports with a fixed body)."""
import socket
import time
from pathlib import Path


def free_port():
    """A free loopback port (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


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
events {{ worker_connections 4096; }}
http {{ access_log off; {servers} }}""")
    return path
