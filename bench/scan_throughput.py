#!/usr/bin/env python3
"""Content scanning cost: throughput and end-of-DATA latency with scanners off vs on.

    load client (asyncio) ──► scattergate --relay [--clamd] [--spamd] [--rspamd] ──► smtp-sink
                                              │ end of DATA
                                  clamd / spamd / rspamd on loopback

One run, the same load for every row: a fresh gateway per row (scanners off; clamd only;
clamd + spamd; clamd + rspamd when rspamd is installed), the daemons started once for all rows
by tests/support/scanners.py. The load client opens `--sessions` concurrent SMTP sessions that
share `--messages` messages of `--size` bytes, and times each message from writing the final
"." to reading the reply: the end-of-DATA latency, which holds the scans and the relay to the
sink (the gateway answers only once the sink took the message). msg/s is messages over the
wall time of the whole load. Prints a markdown table. Loopback only; the load is bounded.

    python bench/scan_throughput.py --messages 300 --sessions 10 --size 5120

takes 1 to 2.5 minutes on a shared 2-core machine, most of it in the spamd row (a spamd
child scores one message at a time, ~9 msg/s when idle; the launcher starts two).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.scanners import Launcher, MissingScanner, require_installed  # noqa: E402
from tests.support.sink import free_port  # noqa: E402

SENDER = "sender@example.net"
RECIPIENT = "user@example.org"
# Every step of the dialogue gets this long; far above any scan, so a stuck run fails instead of hanging.
STEP_TIMEOUT = 120.0
WORDS = ("the quarterly report is attached below and we would like your comments before the "
         "meeting on thursday so that the budget for next year can be agreed in good time").split()


# -- the downstream ---------------------------------------------------------------------------

def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    """smtp-sink that accepts and discards everything (no files: its disk must not be the limit)."""
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    # smtp-sink drops privileges to -u; as root, root keeps it simple (it writes nothing).
    user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    process = subprocess.Popen([binary, "-u", user, f"127.0.0.1:{port}", "1000"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a readiness poll, not a timing assumption
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("smtp-sink did not start")


# -- the gateway ------------------------------------------------------------------------------

class Gateway:
    """`scattergate serve` as a subprocess, stopped by its own pid."""

    def __init__(self, work: Path, sink_port: int, dns_port: int, workers: int, scanners: dict[str, str]) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{self.port}",
                   "--relay", f"127.0.0.1:{sink_port}", "--domain", "example.org", "--no-verify-recipients",
                   "--dns", f"127.0.0.1:{dns_port}", "--workers", str(workers), "--data-dir", str(work)]
        for flag, address in scanners.items():
            command += [f"--{flag}", address]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self._wait_listening(workers)

    def _wait_listening(self, workers: int) -> None:
        assert self.process.stderr is not None
        tail: list[str] = []
        ready = 0
        for line in self.process.stderr:
            tail = (tail + [line])[-20:]
            if "listening on" in line:
                ready += 1
                if ready == workers:
                    # Keep draining its log (a decision line per message), or it blocks on a full pipe.
                    threading.Thread(target=self._drain, daemon=True).start()
                    return
        raise RuntimeError("scattergate exited before listening:\n" + "".join(tail))

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# -- the load client --------------------------------------------------------------------------

def make_message(number: int, size: int) -> bytes:
    """A plain, ham-looking text message of about `size` bytes, dot-stuffing never needed."""
    head = (f"From: Sender <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: report {number}\r\n"
            f"Date: Fri, 27 Nov 2026 03:00:00 +0000\r\nMessage-ID: <bench-{number}@example.net>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    lines: list[bytes] = []
    length = len(head)
    index = number
    while length < size:
        line = (" ".join(WORDS[(index + i) % len(WORDS)] for i in range(12)) + "\r\n").encode()
        index += 5
        lines.append(line)
        length += len(line)
    return head + b"".join(lines)


class SmtpError(Exception):
    pass


async def reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    text: list[str] = []
    while True:
        line = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT)
        if not line:
            raise SmtpError("connection closed")
        text.append(line.decode(errors="replace").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(text)


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str, expect: int) -> None:
    writer.write(line.encode() + b"\r\n")
    code, text = await reply(reader)
    if code != expect:
        raise SmtpError(f"{line!r}: {text}")


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # end-of-DATA, seconds, for every message
    codes: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


async def session(port: int, queue: list[bytes], per_connection: int, result: Result) -> None:
    """Takes messages from the shared queue until it is empty; `per_connection` messages per connection."""
    while queue:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), STEP_TIMEOUT)
        try:
            if (await reply(reader))[0] != 220:
                raise SmtpError("no 220 greeting")
            await command(reader, writer, "EHLO bench.example.net", 250)
            for _ in range(per_connection):
                if not queue:
                    break
                data = queue.pop()
                await command(reader, writer, f"MAIL FROM:<{SENDER}>", 250)
                await command(reader, writer, f"RCPT TO:<{RECIPIENT}>", 250)
                await command(reader, writer, "DATA", 354)
                writer.write(data)
                await writer.drain()
                # The clock starts at the final dot: this is the wait the scans add for a client.
                started = time.perf_counter()
                writer.write(b".\r\n")
                code, _ = await reply(reader)
                result.latencies.append(time.perf_counter() - started)
                result.codes[code] += 1
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(reader.read(), STEP_TIMEOUT)
        finally:
            writer.close()


async def run_load(port: int, messages: list[bytes], sessions: int, per_connection: int) -> Result:
    queue = list(reversed(messages))  # pop() from the end hands them out in order
    result = Result()
    started = time.perf_counter()
    await asyncio.gather(*(session(port, queue, per_connection, result) for _ in range(sessions)))
    result.seconds = time.perf_counter() - started
    return result


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- the run ----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300, help="measured messages per row")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    parser.add_argument("--size", type=int, default=5120, help="bytes per message")
    parser.add_argument("--per-connection", type=int, default=1, help="messages per SMTP connection")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured messages before each row")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--no-rspamd", action="store_true", help="skip the clamd + rspamd row")
    args = parser.parse_args()
    if not (0 < args.sessions <= 200 and 0 < args.messages <= 100_000 and 0 < args.size <= 10 * 1024 * 1024):
        parser.error("keep the load bounded: 1-200 sessions, 1-100000 messages, up to 10 MiB each")
    try:
        for name in ("clamd", "spamd"):
            require_installed(name)
    except MissingScanner as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        print("smtp-sink not found: run scripts/test once (it installs Postfix)", file=sys.stderr)
        return 2
    daemons = ["clamd", "spamd"]
    if not args.no_rspamd:
        try:
            require_installed("rspamd")
            daemons.append("rspamd")
        except MissingScanner:
            print("rspamd not installed: no clamd + rspamd row", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="sg-scan-bench-"))
    work.chmod(0o755)  # spamd runs as 'nobody'; clamd may drop privileges too
    launcher = Launcher(work / "scanners", names=daemons)
    sink, sink_port = start_sink()
    # SPF for the sender passes at once against a loopback zone: no DNS noise in the numbers.
    dns = DnsTestServer({"example.net.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}).start()
    warmup = [make_message(-1 - i, args.size) for i in range(args.warmup)]
    load = [make_message(i, args.size) for i in range(args.messages)]
    rows: list[tuple[str, Result]] = []
    try:
        clamd = launcher.get("clamd").unix_socket
        spamd = launcher.get("spamd").address
        setups: list[tuple[str, dict[str, str]]] = [
            ("scanners off", {}),
            ("clamd", {"clamd": clamd}),
            ("clamd + spamd", {"clamd": clamd, "spamd": spamd}),
        ]
        if "rspamd" in daemons:
            setups.append(("clamd + rspamd", {"clamd": clamd, "rspamd": launcher.get("rspamd").address}))
        for number, (label, scanners) in enumerate(setups):
            gateway = Gateway(work / f"gateway{number}", sink_port, dns.port, args.workers, scanners)
            try:
                # Warm-up: relay pool, scanner connections, spamd's first-message costs.
                asyncio.run(run_load(gateway.port, warmup, args.sessions, args.per_connection))
                result = asyncio.run(run_load(gateway.port, load, args.sessions, args.per_connection))
            finally:
                gateway.stop()
            rows.append((label, result))
            print(f"{label}: {args.messages / result.seconds:.1f} msg/s", file=sys.stderr)
    finally:
        launcher.stop()
        dns.stop()
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    reuse = "one connection per message" if args.per_connection == 1 else f"{args.per_connection} per connection"
    print(f"\n{args.messages} messages x {args.size} bytes, {args.sessions} concurrent sessions, {reuse}, "
          f"{args.workers} gateway worker(s); end-of-DATA latency = final \".\" to reply\n")
    print("| scanners | msg/s | p50 ms | p99 ms | replies |")
    print("|---|---:|---:|---:|---|")
    for label, result in rows:
        codes = ", ".join(f"{count}x {code}" for code, count in sorted(result.codes.items()))
        print(f"| {label} | {args.messages / result.seconds:,.1f} | {percentile(result.latencies, 50) * 1000:,.1f} "
              f"| {percentile(result.latencies, 99) * 1000:,.1f} | {codes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
