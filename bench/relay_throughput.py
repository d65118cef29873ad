#!/usr/bin/env python3
"""Throughput: Postfix as a plain relay vs scattergate, same load, same run.

    smtp-source ──► Postfix (plain relay, queue, fsync, default settings) ──► smtp-sink
    smtp-source ──► scattergate --relay (checks on)           [proxy]  ──► smtp-sink
    smtp-source ──► scattergate --relay --spool (checks on)   [spool]  ──► smtp-sink

`--mode proxy` is the before-queue relay (the downstream's reply is the client's reply);
`--mode spool` is store-and-forward (content and state fsynced before the 250, then delivered
by the scheduler); `--mode both` runs both rows. Every row is timed end to end: from the
first message sent to the last one counted by the sink. With `--rounds N` the rows are run N
times, alternating their order, and the median of each and of the ratios is printed, with
the CPU each side spent per message (user + system time of all its processes, read from
/proc; for Postfix the master and every daemon it started, exited ones included): CPU moves
much less than throughput when the machine is shared.

The baseline is a neutral one: Postfix with its default settings except what relaying on
loopback needs (relay_domains, a transport to the sink, mynetworks, smtpd_peername_lookup = no)
and logging where a system Postfix logs (syslog; `maillog_file` through postlogd costs a
third more CPU per message, see docs/operations.md). The gateway runs with its default
settings (workers = the number of cores), SPF answered by a loopback DNS server.
Prints markdown tables. Loopback only; the load is bounded by --messages.

    python bench/relay_throughput.py --mode both --rounds 3          # the issue-16 harness
    python bench/relay_throughput.py --messages 5000 --workers 2 --mode spool
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


# run_load's sender (smtp-source -f): every loopback client passes its domain's SPF, so the
# checks that need DNS are answered at once by a DnsTestServer with this zone.
SENDER_SPF_ZONE = {"example.net.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}


def run_load_timed(target: str, args: argparse.Namespace, sink: CountingSink) -> tuple[float, float]:
    """Send the load with smtp-source; return (seconds until smtp-source was done, i.e. every
    message answered 250; seconds until the sink had counted all of it). A queueing relay
    (Postfix, the spool) is still delivering when the first clock stops."""
    expected = sink.count + args.messages
    command = ["smtp-source", "-s", str(args.sessions), "-l", str(args.size), "-m", str(args.messages),
               "-f", "sender@example.net", "-t", "user@example.org"]
    if args.reuse:
        command.append("-d")
    started = time.monotonic()
    subprocess.run([*command, target], check=True, stdout=subprocess.DEVNULL)
    accepted = time.monotonic() - started
    if not sink.wait_for(expected, timeout=600):
        raise RuntimeError(f"sink counted {sink.count}, expected {expected}")
    return accepted, time.monotonic() - started


def run_load(target: str, args: argparse.Namespace, sink: CountingSink) -> float:
    """Send the load with smtp-source; return seconds until the sink has counted all of it."""
    return run_load_timed(target, args, sink)[1]


def wait_listening(log: Path, process: subprocess.Popen[bytes], workers: int, timeout: float = 60) -> None:
    """Wait until every worker has logged "listening on" (the log goes to a file: a pipe read
    by a thread of this process could fill up and stall the gateway's event loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count("listening on") >= workers:
            return
        if process.poll() is not None:
            raise RuntimeError(f"scattergate exited before listening: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("scattergate did not start listening")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants, now."""
    found, todo = [], [pid]
    while todo and len(found) < 10_000:
        current = todo.pop()
        found.append(current)
        children = subprocess.run(["pgrep", "-P", str(current)], capture_output=True, text=True).stdout.split()
        todo.extend(int(child) for child in children)
    return found


def cpu_ticks(root: int) -> int:
    """User + system clock ticks of `root` and its descendants, including the children they have
    already reaped (cutime/cstime): Postfix's daemons come and go during a run."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return total


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def check_tools() -> bool:
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found: run scripts/test once (it installs Postfix)", file=sys.stderr)
            return False
    return True


def bench_workdir(prefix: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)  # Postfix's daemons run as 'postfix' and must reach their queue
    return work


@contextlib.contextmanager
def postfix_relay(work: Path, sink_port: int, *, maillog: bool = False) -> Iterator[PrivatePostfix]:
    """A private Postfix as a plain queueing relay to the sink (its queue files are fsynced),
    with default settings but for what relaying on loopback needs. It logs where a system
    Postfix does (syslog), not to a file through postlogd as the test instances do."""
    postfix = PrivatePostfix(
        work, port=free_port(),
        settings={
            "relay_domains": "example.org",
            "transport_maps": f"inline:{{ {{example.org = relay:[127.0.0.1]:{sink_port}}} }}",
            # maillog=True: the old baseline, every log line through postlogd into a file.
            **({} if maillog else {"maillog_file": ""}),
        },
    )
    postfix.start()
    try:
        yield postfix
    finally:
        postfix.stop()


def postfix_master_pid(postfix: PrivatePostfix) -> int:
    return int((postfix.directory / "queue" / "pid" / "master.pid").read_text().split()[0])


@dataclass(frozen=True)
class Running:
    address: str  # HOST:PORT to send the load to
    pid: int  # the process whose tree does the work (CPU is read from it)


@contextlib.contextmanager
def scattergate_relay(work: Path, sink_port: int, *, spool: bool, workers: str = "auto",
                      config: str | None = None, source: Path | None = None) -> Iterator[Running]:
    """`scattergate serve --relay` (optionally `--spool`) in front of the sink, with its default
    checks on; SPF, DKIM and DMARC run against a loopback DNS server publishing the sender's
    SPF. Yields the listening address and the process. `source`: run the package from this `src` directory
    (another build, for bench/ab_relay.py) instead of the installed one."""
    port = free_port()
    dns = DnsTestServer(SENDER_SPF_ZONE).start()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gateway.log"
    with open(log, "wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{port}",
             "--relay", f"127.0.0.1:{sink_port}", "--domain", "example.org", "--dns", f"127.0.0.1:{dns.port}",
             "--workers", workers, "--data-dir", str(work), *(["--spool"] if spool else []),
             *(["--config", config] if config else [])],
            stderr=log_file,
            env={**os.environ, "PYTHONPATH": str(source)} if source else None,
        )
    try:
        wait_listening(log, gateway, os.cpu_count() or 1 if workers == "auto" else int(workers))
        yield Running(f"127.0.0.1:{port}", gateway.pid)
    finally:
        gateway.terminate()
        gateway.wait(60)
        dns.stop()


def gateway_label(mode: str, workers: str) -> str:
    what = "--relay" if mode == "proxy" else "--relay --spool (fsync)"
    count = f"{os.cpu_count()} (auto)" if workers == "auto" else workers
    return f"scattergate {what}, default checks (SPF, DKIM, DMARC, verify), {count} worker(s)"


POSTFIX_LABEL = "Postfix plain relay (queue, fsync, default settings)"
POSTFIX_MAILLOG_LABEL = "Postfix plain relay, maillog_file via postlogd (the old baseline)"


@contextlib.contextmanager
def postfix_running(work: Path, sink_port: int, *, maillog: bool = False) -> Iterator[Running]:
    with postfix_relay(work, sink_port, maillog=maillog) as postfix:
        yield Running(postfix.address, postfix_master_pid(postfix))


def measure(running: Running, args: argparse.Namespace, sink: CountingSink) -> tuple[float, float, float]:
    """One load: (seconds until all accepted, seconds until all delivered, CPU milliseconds per
    message of `running`'s processes, counted until all were delivered)."""
    before = cpu_ticks(running.pid)
    accepted, delivered = run_load_timed(running.address, args, sink)
    return accepted, delivered, (cpu_ticks(running.pid) - before) * TICK_MS / args.messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", default="auto", help="gateway worker processes (default: auto, its default)")
    parser.add_argument("--mode", choices=("proxy", "spool", "both", "none"), default="both",
                        help="scattergate before-queue relay, store-and-forward spool, both rows, or none")
    parser.add_argument("--rounds", type=int, default=3, help="repeat every row; medians are reported")
    parser.add_argument("--reuse", action="store_true", help="several messages per connection (smtp-source -d)")
    parser.add_argument("--skip-postfix", action="store_true")
    parser.add_argument("--postfix-maillog", action="store_true",
                        help="add a row: Postfix logging to a file through postlogd (the bench's old baseline)")
    parser.add_argument("--config", metavar="FILE", help="extra scattergate config (e.g. to turn a check off)")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20 (a bounded load)")
    if not check_tools():
        return 2

    modes = ["proxy", "spool"] if args.mode == "both" else [args.mode]
    modes = [] if args.mode == "none" else modes
    labels = (([] if args.skip_postfix else [POSTFIX_LABEL]) + ([POSTFIX_MAILLOG_LABEL] if args.postfix_maillog else [])
              + [gateway_label(m, args.workers) for m in modes])
    seconds: dict[str, list[float]] = {label: [] for label in labels}  # until the sink counted all
    accepted: dict[str, list[float]] = {label: [] for label in labels}  # until smtp-source was done
    cpu: dict[str, list[float]] = {label: [] for label in labels}
    work = bench_workdir("sg-bench-")
    sink = CountingSink()
    try:
        with contextlib.ExitStack() as stack:
            targets: dict[str, Running] = {}
            if not args.skip_postfix:
                targets[POSTFIX_LABEL] = stack.enter_context(postfix_running(work / "postfix", sink.port))
            if args.postfix_maillog:
                targets[POSTFIX_MAILLOG_LABEL] = stack.enter_context(
                    postfix_running(work / "postfix-maillog", sink.port, maillog=True))
            for mode in modes:
                targets[gateway_label(mode, args.workers)] = stack.enter_context(scattergate_relay(
                    work / f"gateway-{mode}", sink.port, spool=mode == "spool", workers=args.workers,
                    config=args.config,
                ))
            for round_ in range(args.rounds):
                # Alternate the order so that a drift in the machine's load favours no row.
                for label in (labels if round_ % 2 == 0 else labels[::-1]):
                    until_accepted, until_delivered, cost = measure(targets[label], args, sink)
                    accepted[label].append(until_accepted)
                    seconds[label].append(until_delivered)
                    cpu[label].append(cost)
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.messages} messages x {args.size} bytes, {args.sessions} sessions"
          f"{', connections reused' if args.reuse else ', one connection per message'}"
          f"{f', median of {args.rounds} rounds' if args.rounds > 1 else ''}\n")
    print("msg/s accepted: until smtp-source had its last 250 (what a client sees); msg/s delivered: until")
    print("the sink had counted the last one (a queueing relay is still delivering when the first clock stops).\n")
    per_round = args.rounds > 1
    print("| setup | msg/s accepted | msg/s delivered | CPU ms/msg |" + (" accepted msg/s per round |" if per_round else ""))
    print("|---|---:|---:|---:|" + ("---|" if per_round else ""))
    for label in labels:
        rounds = ", ".join(f"{args.messages / s:,.0f}" for s in accepted[label]) if per_round else ""
        print(f"| {label} | {args.messages / statistics.median(accepted[label]):,.0f}"
              f" | {args.messages / statistics.median(seconds[label]):,.0f} | {statistics.median(cpu[label]):.2f} |"
              + (f" {rounds} |" if rounds else ""))
    if not args.skip_postfix:
        print()
        for label in labels[1:]:
            for what, times in (("accepted", accepted), ("delivered", seconds)):
                ratios = [p / g for p, g in zip(times[POSTFIX_LABEL], times[label])]
                each = ", ".join(f"{r:.2f}x" for r in ratios)
                print(f"{label} / Postfix, {what}: median {statistics.median(ratios):.2f}x"
                      + (f" (rounds: {each})" if len(ratios) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
