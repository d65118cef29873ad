#!/usr/bin/env python3
"""Memory at many idle connections: RSS of one gateway worker holding N open SMTP sessions.

    python bench/idle_connections.py --connections 1000

Loopback only; the client opens exactly N connections, reads each banner, holds them, then
reads the worker's VmRSS from /proc. Prints a table: RSS before, with N held, per connection.
"""

from __future__ import annotations

import argparse
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.sink import free_port  # noqa: E402


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    if not 1 <= args.connections <= 5000:
        parser.error("--connections must be between 1 and 5000 (a bounded load)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections * 2 + 100)), hard))
    work = Path(tempfile.mkdtemp(prefix="sg-idle-"))
    port = free_port()
    config = work / "sg.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nmax_connections = {args.connections + 10}\n'
        f'max_connections_per_client = {args.connections + 10}\n[auth]\nspf = false\ndkim = false\n'
        f'[state]\ndata_dir = "{work}/data"\n'
    )
    gateway = subprocess.Popen([sys.executable, "-m", "scattergate", "serve", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    assert gateway.stderr is not None
    for line in gateway.stderr:
        if "listening on" in line:
            break
    held: list[socket.socket] = []
    try:
        before = rss_mb(gateway.pid)
        for _ in range(args.connections):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            if not sock.recv(200).startswith(b"220"):
                raise RuntimeError("no banner")
            held.append(sock)
        time.sleep(0.5)  # let the worker settle its buffers before reading RSS (a measurement, not a test)
        during = rss_mb(gateway.pid)
    finally:
        for sock in held:
            sock.close()
        gateway.terminate()
        gateway.wait(60)
    print(f"\n| idle connections | RSS before (MB) | RSS held (MB) | per connection (KB) |")
    print("|---:|---:|---:|---:|")
    print(f"| {args.connections} | {before:.1f} | {during:.1f} | {(during - before) * 1024 / args.connections:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
