#!/usr/bin/env python3
"""End-of-DATA latency at half of saturation: the sink, Postfix, scattergate proxy and spool.

    open-loop client ──► smtp-sink                                     (the floor: client + sink)
    open-loop client ──► Postfix (plain relay, queue, fsync) ──► smtp-sink
    open-loop client ──► scattergate --relay (checks on)     ──► smtp-sink   [proxy]
    open-loop client ──► scattergate --relay --spool         ──► smtp-sink   [spool]

First the saturation throughput of Postfix and of both scattergate modes is measured with
Postfix's smtp-source, as in relay_throughput.py (or given with --saturation). Then each
server gets an open-loop load at half of its own saturation (--fraction), the sink directly
at the proxy's rate (so "added by scattergate" compares like with like), or every row the
same --rate: an asyncio client starts message i at t0 + i/rate whether or not the earlier
ones are answered (a fixed arrival schedule; a slow server cannot slow the load down), one
connection per message. The latency of a message is the time from writing the final "."
(with the body: one write, the socket has TCP_NODELAY) to reading the complete reply.
Loopback only; bounded by --messages (+ --warmup, not counted) per row.

    .venv/bin/python bench/latency.py --messages 3000 --size 5120
    .venv/bin/python bench/latency.py --saturation 700,1000,900 --rounds 3

Prints a markdown table per round (p50/p95/p99/max in ms), then the medians over rounds of
p99 added by scattergate's proxy (p99 proxy − p99 sink directly) and of p99 spool vs
p99 Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from relay_throughput import (  # noqa: E402
    CountingSink, bench_workdir, check_tools, postfix_relay, run_load, scattergate_relay,
)

SINK, POSTFIX, PROXY, SPOOL = "smtp-sink directly", "Postfix plain relay", "scattergate proxy", "scattergate spool"


@dataclasses.dataclass
class Result:
    row: str
    rate: float
    latencies: list[float]  # seconds, one per answered message
    lags: list[float]  # how late each message started against its schedule (client health)
    refused: int  # replies other than 250 at end of DATA
    failed: int  # connection errors, protocol trouble
    elapsed: float

    def pct(self, q: float) -> float:
        """The q-th percentile in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))
        return ordered[index] * 1000


def message_body(size: int) -> bytes:
    """A plain message of about `size` bytes, dot-stuffing not needed (no line starts with '.')."""
    head = (b"From: <sender@example.net>\r\nTo: <user@example.org>\r\nSubject: latency probe\r\n"
            b"Date: Thu, 27 Nov 2026 10:00:00 +0000\r\n\r\n")
    line = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 abcdefghijklm\r\n"
    lines = max(1, (size - len(head)) // len(line))
    return head + line * lines


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) reply; return its code."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise ConnectionError(f"short reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def _one(host: str, port: int, body: bytes, latencies: list[float] | None, counts: dict[str, int]) -> None:
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        steps = (b"", b"EHLO client.example\r\n", b"MAIL FROM:<sender@example.net>\r\n",
                 b"RCPT TO:<user@example.org>\r\n", b"DATA\r\n")
        for command, wanted in zip(steps, (220, 250, 250, 250, 354)):
            if command:
                writer.write(command)
            code = await _reply(reader)
            if code != wanted:
                counts["refused"] += 1
                return
        started = time.perf_counter()
        writer.write(body + b".\r\n")
        code = await _reply(reader)
        elapsed = time.perf_counter() - started
        if code != 250:
            counts["refused"] += 1
        elif latencies is not None:
            latencies.append(elapsed)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
        counts["failed"] += 1
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()


async def open_loop(target: str, rate: float, messages: int, warmup: int, body: bytes) -> Result:
    """Start message i at t0 + i/rate, independent of replies; measure end-of-DATA latency."""
    host, port = target.rsplit(":", 1)
    latencies: list[float] = []
    lags: list[float] = []
    counts = {"refused": 0, "failed": 0}
    loop = asyncio.get_running_loop()
    tasks = []
    total = warmup + messages
    t0 = loop.time() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if i >= warmup:
            lags.append(max(0.0, loop.time() - due))
        tasks.append(asyncio.create_task(_one(host, int(port), body, latencies if i >= warmup else None, counts)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - t0
    return Result("", rate, latencies, lags, counts["refused"], counts["failed"], elapsed)


def drive(target: str, rate: float, args: argparse.Namespace, body: bytes) -> Result:
    try:
        import uvloop  # the client's own overhead is part of the "sink directly" floor: keep it low

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(open_loop(target, rate, args.messages, args.warmup, body))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="measured messages per row")
    parser.add_argument("--warmup", type=int, default=200, help="messages sent first, not measured")
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5, help="of saturation (default: half)")
    parser.add_argument("--rate", type=float, help="one fixed rate (msg/s) for every row instead")
    parser.add_argument("--saturation", metavar="POSTFIX,PROXY,SPOOL",
                        help="saturation msg/s, skips measuring it")
    parser.add_argument("--sat-messages", type=int, default=3000, help="messages per saturation measurement")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source sessions for saturation")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the latency rows; medians reported")
    args = parser.parse_args()
    if not (1 <= args.messages <= 20000 and 0 <= args.warmup <= 5000 and 1 <= args.rounds <= 10):
        parser.error("--messages 1..20000, --warmup 0..5000, --rounds 1..10 (a bounded load)")
    if not check_tools():
        return 2

    body = message_body(args.size)
    work = bench_workdir("sg-latency-")
    # All the load comes from 127.0.0.1: lift the per-client connection limit (not the point here).
    (work / "latency.toml").write_text("[server]\nmax_connections_per_client = 1000\n")
    sink = CountingSink()
    saturation: dict[str, float] = {}
    results: list[list[Result]] = []
    try:
        with contextlib.ExitStack() as stack:
            targets = {
                SINK: f"127.0.0.1:{sink.port}",
                POSTFIX: stack.enter_context(postfix_relay(work / "postfix", sink.port)).address,
                PROXY: stack.enter_context(scattergate_relay(
                    work / "proxy", sink.port, spool=False, workers=str(args.workers), config=str(work / "latency.toml"))).address,
                SPOOL: stack.enter_context(scattergate_relay(
                    work / "spool", sink.port, spool=True, workers=str(args.workers), config=str(work / "latency.toml"))).address,
            }
            if args.saturation:
                values = [float(v) for v in args.saturation.split(",")]
                saturation = dict(zip((POSTFIX, PROXY, SPOOL), values))
            elif args.rate is None:
                load = argparse.Namespace(messages=args.sat_messages, size=args.size, sessions=args.sessions,
                                          reuse=False)
                for row in (POSTFIX, PROXY, SPOOL):
                    saturation[row] = args.sat_messages / run_load(targets[row], load, sink)
                    print(f"saturation {row}: {saturation[row]:,.0f} msg/s", file=sys.stderr)
            for round_ in range(args.rounds):
                current: list[Result] = []
                for row in (SINK, POSTFIX, PROXY, SPOOL):
                    if args.rate is not None:
                        rate = args.rate
                    else:
                        rate = args.fraction * saturation[PROXY if row == SINK else row]
                    expected = sink.count + args.warmup + args.messages
                    result = drive(targets[row], rate, args, body)
                    result.row = row
                    # Queued mail must be out before the next row starts.
                    if not sink.wait_for(expected - result.refused - result.failed, timeout=600):
                        print(f"warning: {row}: the sink counted {sink.count}, expected {expected}", file=sys.stderr)
                    current.append(result)
                    print(f"round {round_ + 1} {row}: p99 {result.pct(99):.1f} ms", file=sys.stderr)
                results.append(current)
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.messages} messages x {len(body)} bytes per row (+{args.warmup} warm-up), open loop,"
          f" one connection per message, {args.workers} scattergate worker(s)")
    if saturation:
        print("saturation (smtp-source, %d sessions): " % args.sessions
              + ", ".join(f"{row} {value:,.0f} msg/s" for row, value in saturation.items()))
    for index, current in enumerate(results):
        print(f"\nround {index + 1}\n")
        print("| target | rate msg/s | p50 ms | p95 ms | p99 ms | max ms | client lag p99 ms | not 250 | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in current:
            lag = sorted(r.lags)[int(0.99 * (len(r.lags) - 1))] * 1000 if r.lags else float("nan")
            print(f"| {r.row} | {r.rate:,.0f} | {r.pct(50):.1f} | {r.pct(95):.1f} | {r.pct(99):.1f} | {r.pct(100):.1f}"
                  f" | {lag:.1f} | {r.refused} | {r.failed} |")
    if len(results) > 1:
        print(f"\nmedians over {len(results)} rounds\n")
        print("| target | rate msg/s | p50 ms | p95 ms | p99 ms | p99 per round |")
        print("|---|---:|---:|---:|---:|---|")
        for index, first in enumerate(results[0]):
            rows = [current[index] for current in results]
            median = {q: statistics.median(r.pct(q) for r in rows) for q in (50, 95, 99)}
            print(f"| {first.row} | {first.rate:,.0f} | {median[50]:.1f} | {median[95]:.1f} | {median[99]:.1f}"
                  f" | {', '.join(f'{r.pct(99):.1f}' for r in rows)} |")
    added = [c[2].pct(99) - c[0].pct(99) for c in results]
    spool_vs = [(c[3].pct(99), c[1].pct(99)) for c in results]
    print(f"\np99 added by scattergate proxy (p99 proxy − p99 sink directly): median {statistics.median(added):.1f} ms"
          f" (rounds: {', '.join(f'{a:.1f}' for a in added)}); target ≤ 20 ms")
    print(f"p99 scattergate spool vs Postfix: median {statistics.median(s for s, _ in spool_vs):.1f} ms vs"
          f" {statistics.median(p for _, p in spool_vs):.1f} ms"
          f" (rounds: {', '.join(f'{s:.1f}/{p:.1f}' for s, p in spool_vs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
