#!/usr/bin/env python3
"""Throughput: Postfix as a plain relay vs scattergate --relay, same load, same run.

    smtp-source ──► Postfix (plain relay, queue)      ──► smtp-sink
    smtp-source ──► scattergate --relay (checks on)   ──► smtp-sink

Both are timed end to end: from the first message sent to the last one counted by the sink.
Prints a markdown table. Loopback only; the load is bounded by --messages.

    python bench/relay_throughput.py --messages 5000 --size 5120 --sessions 20 --workers 2
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.postfix import PrivatePostfix  # noqa: E402
from tests.support.sink import free_port  # noqa: E402


class CountingSink:
    """smtp-sink -c, with its running message count read from its output."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            ["smtp-sink", "-u", "root", "-c", f"127.0.0.1:{self.port}", "1000"],
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := self.process.stdout.read1(4096):
            buffer = (buffer + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buffer)
            if found:
                with self._changed:
                    self.count = int(found[-1])
                    self._changed.notify_all()

    def wait_for(self, total: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= total, timeout)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def run_load(target: str, args: argparse.Namespace, sink: CountingSink) -> float:
    """Send the load with smtp-source; return seconds until the sink has counted all of it."""
    expected = sink.count + args.messages
    command = ["smtp-source", "-s", str(args.sessions), "-l", str(args.size), "-m", str(args.messages),
               "-f", "sender@example.net", "-t", "user@example.org"]
    if args.reuse:
        command.append("-d")
    started = time.monotonic()
    subprocess.run([*command, target], check=True, stdout=subprocess.DEVNULL)
    if not sink.wait_for(expected, timeout=600):
        raise RuntimeError(f"sink counted {sink.count}, expected {expected}")
    return time.monotonic() - started


def wait_listening(process: subprocess.Popen[str], workers: int) -> None:
    assert process.stderr is not None
    ready = 0
    for line in process.stderr:
        if "listening on" in line:
            ready += 1
            if ready == workers:
                threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
                return
    raise RuntimeError("scattergate exited before listening")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="several messages per connection (smtp-source -d)")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--config", metavar="FILE", help="extra scattergate config (e.g. to turn a check off)")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found: run scripts/test once (it installs Postfix)", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    work.chmod(0o755)  # Postfix's daemons run as 'postfix' and must reach their queue
    sink = CountingSink()
    results: list[tuple[str, float]] = []
    try:
        if not args.skip_postfix:
            postfix = PrivatePostfix(
                work / "postfix", port=free_port(),
                settings={
                    "relay_domains": "example.org",
                    "transport_maps": f"inline:{{ {{example.org = relay:[127.0.0.1]:{sink.port}}} }}",
                    "default_process_limit": "100",
                },
            )
            postfix.start()
            try:
                results.append(("Postfix plain relay (queue, fsync)", run_load(postfix.address, args, sink)))
            finally:
                postfix.stop()

        port = free_port()
        # SPF, DKIM and DMARC run against a loopback DNS server publishing the sender's SPF.
        dns = DnsTestServer({"example.net.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}).start()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{port}",
             "--relay", f"127.0.0.1:{sink.port}", "--domain", "example.org", "--dns", f"127.0.0.1:{dns.port}",
             "--workers", str(args.workers), "--data-dir", str(work / "gateway"),
             *(["--config", args.config] if args.config else [])],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_listening(gateway, args.workers)
            label = f"scattergate --relay, all checks on (SPF, DKIM, DMARC, verify), {args.workers} worker(s)"
            results.append((label, run_load(f"127.0.0.1:{port}", args, sink)))
        finally:
            gateway.terminate()
            gateway.wait(60)
            dns.stop()
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.messages} messages x {args.size} bytes, {args.sessions} sessions"
          f"{', connections reused' if args.reuse else ', one connection per message'}\n")
    print("| setup | seconds | msg/s |")
    print("|---|---:|---:|")
    for label, seconds in results:
        print(f"| {label} | {seconds:.2f} | {args.messages / seconds:,.0f} |")
    if len(results) == 2:
        ratio = results[0][1] / results[1][1]
        print(f"\nscattergate / Postfix: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
