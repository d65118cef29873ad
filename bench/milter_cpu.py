#!/usr/bin/env python3
"""CPU per message of the milter, without Postfix: replay what Postfix sends, measure the milter.

A companion to bench/milter_throughput.py that needs no Postfix, no smtp-source and no second
core: it starts the same two milter processes as that bench's verdict rows —

  - the do-nothing milter on our codec, answering only at RCPT and end of message
    (milter_throughput.OWN_CODEC, "quiet");
  - `scattergate milter` with the bench's configuration (as shipped: SPF and DKIM on, asking a
    DNS server on loopback that publishes the sender's SPF, so the sender is proven; logging at
    warning, metrics on over their own HTTP port, no recipient list, `--domain example.org`;
    `--no-auth`: SPF and DKIM off, every sender unproven)

— and drives each over loopback TCP with the packet stream Postfix 3.x sends for one message of
`smtp-source -l 5120 -f sender@example.net -t user@example.org` (captured with a recording
proxy between Postfix and `scattergate milter`, 2026-12-05): a new milter connection per
message, option negotiation, then the packets in the same five writes Postfix makes (connect,
HELO, MAIL, RCPT and their macro packets; the DATA macros; four headers, one 5122-byte body
chunk and end of message; two aborts and quit), waiting for the milter's answer where Postfix
waits (negotiation, RCPT, end of message). The do-nothing milter negotiates what Postfix offers
and scattergate its own reply pattern, so each gets the stream it would get from Postfix.
`--sessions` connections run at a time, `--messages` in all.

What is reported is the milter process's CPU (user + system from /proc) per message, start-up
excluded, the median over `--rounds` (the two milters alternate; each round is a fresh
process). The client's own CPU is not counted. `--baseline-src DIR` adds a third process: the
scattergate milter from another source tree (e.g. `git archive main src | tar -x -C /tmp/base`,
then `--baseline-src /tmp/base/src`), for an A/B in the same run.

    .venv/bin/python bench/milter_cpu.py --messages 3000 --sessions 20 --rounds 5

`--logic` measures without sockets or a second process: the same `scattergate milter`
configuration is assembled in this process (config from the same command line, the Gateway as
`run_service` builds it, metrics on) and the decoded packets of each message are handed to a
fresh `MilterConnection` (`handle_now` / `handle_later`, as the socket loop does), 20
connections interleaved; process time per message. That is the milter's own logic — state
machine, checks, decision, recording, metrics — without the event loop's socket work;
`--logic --cprofile FILE` profiles exactly that.

To see where the time goes: `--py-spy FILE.svg` records the scattergate milter of the first
round with py-spy (installed in the venv) into a flame graph; `--cprofile FILE` runs it under
cProfile instead (the stats are written when the milter stops; read them with pstats).
Numbers from this harness are CPU of one process on an otherwise quiet machine; they say what
a change costs, not what Postfix's throughput will be.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from milter_throughput import AUTH_OFF, OWN_CODEC, cpu_seconds, wait_connectable  # noqa: E402
from relay_throughput import SENDER_SPF_ZONE  # noqa: E402
from scattergate.frontends import milter_codec as mc  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.sink import free_port  # noqa: E402

# What Postfix 3.x offers (version 6, every action, every protocol flag).
OFFER = mc.encode_command(mc.OptNeg(6, 0x1FF, 0x1FFFFF))
# smtp-source -l 5120: 63 lines of a digit and 77 X, one of 80 X (5122 bytes with the CRLFs).
BODY = b"".join(b"%d%s\r\n" % ((i + 1) % 10, b"X" * 77) for i in range(63)) + b"X" * 80 + b"\r\n"


def message_writes(number: int) -> list[tuple[bytes, bool]]:
    """The writes Postfix makes for message `number` after the negotiation, each with whether
    Postfix then waits for an answer. Macro packets as Postfix sends them to scattergate (it
    asked for {daemon_name} at connect and empty lists elsewhere); the do-nothing milter asks
    for no list and gets the same packets here (the cost of Postfix's default macros is not
    the milter's to measure)."""
    e = mc.encode_command
    port = 30000 + number % 30000
    first = b"".join([
        e(mc.Macros("C", {"{daemon_name}": "postfix.test.example"})),
        e(mc.Connect("[127.0.0.1]", "4", port, "127.0.0.1")),
        e(mc.Macros("H", {})), e(mc.Helo("vm")),
        e(mc.Macros("M", {})), e(mc.Mail("<sender@example.net>")),
        e(mc.Macros("R", {})), e(mc.Rcpt("<user@example.org>")),
    ])
    content = b"".join([
        e(mc.Macros("L", {})), e(mc.Header("From", " <sender@example.net>")),
        e(mc.Macros("L", {})), e(mc.Header("To", " <user@example.org>")),
        e(mc.Macros("L", {})), e(mc.Header("Date", " Sat,  5 Dec 2026 06:54:42 +0000 (UTC)")),
        e(mc.Macros("L", {})), e(mc.Header("Message-Id", f" <7bca.{number // 65536:04x}.{number % 65536:04x}@vm>")),
        e(mc.Macros("B", {})), e(mc.Body(BODY)),
        e(mc.Macros("E", {})), e(mc.EndOfMessage()),
    ])
    return [(first, True), (e(mc.Macros("T", {})), False), (content, True),
            (e(mc.Abort()) + e(mc.Abort()) + e(mc.Quit()), False)]


async def read_packets(reader: asyncio.StreamReader, until: bytes) -> None:
    """Read response packets up to and including one whose code is in `until`."""
    while True:
        header = await reader.readexactly(5)
        length = int.from_bytes(header[:4], "big")
        await reader.readexactly(length - 1)
        if header[4:5] in until:
            return


async def one_message(port: int, number: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(OFFER)
    await read_packets(reader, b"O")
    for data, answered in message_writes(number):
        writer.write(data)
        await writer.drain()
        if answered:
            # RCPT and end of message: Postfix waits for the final answer of the step.
            await read_packets(reader, b"carty")
    await reader.read()  # the milter closes after Quit
    writer.close()


async def drive(port: int, messages: int, sessions: int) -> None:
    counter = iter(range(messages))

    async def session() -> None:
        for number in counter:
            await one_message(port, number)

    await asyncio.gather(*(session() for _ in range(sessions)))


def measure(pid: int, port: int, messages: int, sessions: int) -> float:
    """CPU ms per message the process `pid` spends on `messages` messages."""
    asyncio.run(drive(port, 20, 5))  # warm-up: imports, caches, first connections
    time.sleep(0.2)
    before = cpu_seconds(pid)
    asyncio.run(drive(port, messages, sessions))
    time.sleep(0.2)  # the last Quit handled, the recorder's periodic flush had its turn
    return (cpu_seconds(pid) - before) * 1000 / messages


def logic(args: argparse.Namespace, config_text: str, work: Path, dns: str) -> list[float]:
    """µs of process time per message of the milter's logic, in this process (see --logic)."""
    import cProfile

    from scattergate.assembly import assemble
    from scattergate.cli.main import build_parser, load_config
    from scattergate.frontends import milter
    from scattergate.pipeline import Gateway
    from scattergate.state.factory import open_store
    from scattergate.web import service as web_service

    toml = work / "logic.toml"
    toml.write_text(config_text.format(data=work / "logic"))
    argv = ["milter", "--config", str(toml), "--domain", "example.org", "--listen", "inet:127.0.0.1:1",
            "--http-listen", "127.0.0.1:1", "--dns", dns]
    config = load_config(build_parser().parse_args(argv), probe_listen=False)
    milter.for_postfix(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    web_service.prepare(config, processes=1)
    streams = [[(list(mc.Decoder().feed(data)), answered) for data, answered in message_writes(n)]
               for n in range(args.messages)]
    offer = mc.Decoder().feed(OFFER)

    async def run(profile: cProfile.Profile | None) -> float:
        store = open_store(config)
        gateway = Gateway(config, store, assemble(config, store, web_service.metrics_for(config), behind_postfix=True))
        await gateway.start()
        options = {"never_bounce": config.postfix.never_bounce, "no_reply": config.postfix.milter_skip_replies,
                   "rewrite_sender": milter.batv_signer(gateway),
                   "memory": milter.MemoryBudget(config.postfix.milter_memory_limit),
                   "trust": milter.PostfixTrust(gateway, config)}

        async def one(stream: list[tuple[list[mc.Command], bool]]) -> None:
            connection = milter.MilterConnection(gateway, **options)  # type: ignore[arg-type]
            for command in offer:
                connection.handle_now(command)
            for commands, _ in stream:
                for command in commands:
                    if connection.handle_now(command) is milter.LATER:
                        await connection.handle_later(command)
                await asyncio.sleep(0)  # let the other connections in, as reads would
            connection.close()

        async def lane(numbers: range) -> None:
            for number in numbers:
                await one(streams[number])

        try:
            if profile is not None:
                profile.enable()
            started = time.process_time()
            await asyncio.gather(*(lane(range(i, args.messages, args.sessions)) for i in range(args.sessions)))
            await gateway.recorder.flush()
            elapsed = time.process_time() - started
            if profile is not None:
                profile.disable()
        finally:
            await gateway.stop()
            store.close()
        return elapsed * 1e6 / args.messages

    from scattergate.serve import new_event_loop

    results = []
    for round_no in range(args.rounds):
        profile = cProfile.Profile() if round_no == 0 and args.cprofile else None
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            results.append(runner.run(run(profile)))
        if profile is not None:
            profile.dump_stats(args.cprofile)
    return results


def instructions(args: argparse.Namespace, names: list[str], command, work: Path) -> int:  # type: ignore[no-untyped-def]
    """--instructions: user-space instructions per message of each milter under callgrind."""
    counts: dict[str, float] = {}
    for name in names:
        totals = []
        for messages in (max(1, args.messages // 6), args.messages):
            port = free_port()
            cmd, env = command(name, port, len(totals))
            out = work / f"callgrind-{name}-{messages}.out"
            process = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
                                       cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_connectable(str(port), process, timeout=600)
                asyncio.run(drive(port, messages, args.sessions))
            finally:
                process.terminate()
                process.wait(600)
            totals.append(next(int(line.split()[1]) for line in out.read_text().splitlines()
                               if line.startswith(("summary:", "totals:"))))
        counts[name] = (totals[1] - totals[0]) / (args.messages - max(1, args.messages // 6))
    labels = {"nothing": "do-nothing milter on our codec", "sg": "scattergate milter (bench config)",
              "base": f"scattergate milter from {args.baseline_src}"}
    print(f"\n{args.messages} messages, {args.sessions} connections at a time; user-space instructions per"
          f" message (callgrind)\n")
    for name in names:
        print(f"| {labels[name]} | {counts[name]:,.0f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--toml", default="", metavar="TEXT", help="extra scattergate config")
    parser.add_argument("--no-auth", dest="auth", action="store_false",
                        help="SPF and DKIM off (default: on, as shipped, against a loopback DNS server)")
    parser.add_argument("--baseline-src", default="", metavar="DIR",
                        help="also measure the scattergate milter from this source tree (A/B)")
    parser.add_argument("--only", choices=("sg", "nothing"), default=None, help="measure one milter only")
    parser.add_argument("--py-spy", default="", metavar="SVG", help="py-spy flame graph of the first scattergate round")
    parser.add_argument("--cprofile", default="", metavar="FILE", help="cProfile stats of the first scattergate round")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions instead (valgrind callgrind, deterministic, ~60x slower):"
                             " each milter runs twice, for --messages and a sixth of them; per message from the"
                             " difference (user space only: the kernel's share is not counted)")
    parser.add_argument("--logic", action="store_true",
                        help="the milter's logic in this process, without sockets (µs of process time per message)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sg-mcpu-"))
    (work / "codec_trivial.py").write_text(OWN_CODEC)
    # The replayed sender's domain passes SPF from loopback, as in bench/milter_throughput.py.
    dns_server = DnsTestServer(SENDER_SPF_ZONE).start()
    dns = f"127.0.0.1:{dns_server.port}"
    config = ("" if args.auth else AUTH_OFF) + textwrap.dedent("""\
        [state]
        data_dir = "{data}"
        [logging]
        level = "warning"
        file = ""
        """) + args.toml.replace("\\n", "\n") + "\n"

    def command(name: str, port: int, round_no: int) -> tuple[list[str], dict[str, str] | None]:
        if name == "nothing":
            return [sys.executable, str(work / "codec_trivial.py"), str(port), "quiet"], None
        toml = work / f"{name}-{round_no}.toml"
        toml.write_text(config.format(data=work / f"{name}-{round_no}"))
        python = [sys.executable]
        if name == "sg" and round_no == 0 and args.cprofile:
            python += ["-m", "cProfile", "-o", str(Path(args.cprofile).resolve())]
        cmd = [*python, "-m", "scattergate", "milter", "--config", str(toml), "--domain", "example.org",
               "--listen", f"inet:127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{free_port()}", "--dns", dns]
        env = {**os.environ, "PYTHONPATH": str(Path(args.baseline_src).resolve())} if name == "base" else None
        return cmd, env

    if args.logic:
        try:
            results_us = logic(args, config, work, dns)
        finally:
            dns_server.stop()
            shutil.rmtree(work, ignore_errors=True)
        print(f"\n{args.messages} messages, {args.sessions} connections interleaved, in process, no sockets:"
              f" scattergate milter logic {statistics.median(results_us):.1f} µs/msg"
              f" (median; rounds {', '.join(f'{v:.1f}' for v in results_us)})")
        return 0

    names = ["nothing", "sg"] if args.only is None else [args.only]
    if args.baseline_src:
        names.append("base")
    results: dict[str, list[float]] = {name: [] for name in names}
    if args.instructions:
        try:
            return instructions(args, names, command, work)
        finally:
            dns_server.stop()
            shutil.rmtree(work, ignore_errors=True)
    try:
        for round_no in range(args.rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for name in order:
                port = free_port()
                cmd, env = command(name, port, round_no)
                process = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL)
                spy = None
                try:
                    wait_connectable(str(port), process)
                    if name == "sg" and round_no == 0 and args.py_spy:
                        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o",
                                                args.py_spy, "--pid", str(process.pid), "--rate", "250",
                                                *(["--format", "raw"] if not args.py_spy.endswith(".svg") else [])],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(1)
                    results[name].append(measure(process.pid, port, args.messages, args.sessions))
                finally:
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(60)
                    process.terminate()
                    process.wait(30)
    finally:
        dns_server.stop()
        shutil.rmtree(work, ignore_errors=True)

    labels = {"nothing": "do-nothing milter on our codec (replies at RCPT/end)",
              "sg": "scattergate milter (bench config)", "base": f"scattergate milter from {args.baseline_src}"}
    print(f"\n{args.messages} messages, {args.sessions} connections at a time, one connection per message,"
          f" {args.rounds} round(s); milter CPU (user + system) per message\n")
    print("| milter | CPU ms/msg (median) | per round |")
    print("|---|---:|---|")
    for name in names:
        print(f"| {labels[name]} | {statistics.median(results[name]):.3f} |"
              f" {', '.join(f'{v:.3f}' for v in results[name])} |")
    if "sg" in results and "nothing" in results:
        gap = statistics.median(results["sg"]) - statistics.median(results["nothing"])
        print(f"\nscattergate spends {gap:.3f} ms/msg more than the do-nothing milter.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
