#!/usr/bin/env python3
"""Throughput: Postfix alone vs Postfix + milters / policy service, same load, same run.

    smtp-source ──► Postfix smtpd (listener per setup) ──► queue ──► smtp-sink

One private Postfix with one smtpd listener per setup, so every row shares the same Postfix,
queue and sink. Rows:
  - Postfix alone (no milter)
  - trivial milter on pymilter/libmilter (continue at every step: envelope, headers, body)
  - trivial milter on our sans-IO codec + asyncio (the same steps)
  - do-nothing milter on our codec that answers only at RCPT and end of message, and the same
    asking Postfix for scattergate's edits at the end of the message: the Authentication-Results
    header it inserts (SPF/DKIM on), or with --no-auth NOTIFY=NEVER on every recipient (what it
    asks for every sender it cannot prove: with --no-auth, all)
  - scattergate milter with its shipped settings: every envelope/content check on, SPF and
    DKIM answered by a DNS server on loopback that publishes the sender's SPF (so the sender is
    proven and gets no NOTIFY=NEVER edit); --no-auth turns SPF and DKIM off
  - the same over a unix socket
  - scattergate policy service (check_policy_service at RCPT)
Each milter runs in its own process. Timed end to end: first message sent → sink counted all.

The verdict the issue asks for comes last: scattergate's milter against the do-nothing milter
on our own codec with the same reply pattern (answers only at RCPT and end of message), same
run, same Postfix — the target is 0.90x or better — and the CPU each milter process spent per
message (user + system time from /proc, startup excluded).

    .venv/bin/python bench/milter_throughput.py --messages 3000 --size 5120 --sessions 20 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
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

from relay_throughput import SENDER_SPF_ZONE, CountingSink, run_load  # noqa: E402
from tests.support.dns_server import DnsTestServer  # noqa: E402
from tests.support.sink import free_port  # noqa: E402
from tests.system.postfix_fixtures import ListenerPostfix  # noqa: E402

PYMILTER = '''
import sys, Milter
class Trivial(Milter.Base):
    def envfrom(self, *a): return Milter.CONTINUE
    def envrcpt(self, *a): return Milter.CONTINUE
    def header(self, *a): return Milter.CONTINUE
    def eoh(self): return Milter.CONTINUE
    def body(self, chunk): return Milter.CONTINUE
    def eom(self): return Milter.CONTINUE
Milter.factory = Trivial
Milter.set_flags(0)
print("ready", flush=True)
Milter.runmilter("trivial", "inet:%s@127.0.0.1" % sys.argv[1], 240)
'''

OWN_CODEC = '''
import asyncio, sys
from scattergate.frontends import milter_codec as mc
from scattergate.serve import new_event_loop
CONT = mc.encode(mc.Continue())
# argv[2] == "quiet": ask Postfix not to wait for replies except at RCPT and end of message;
# "never": the same, and at the end of each message ask Postfix for NOTIFY=NEVER on every
# recipient, with the edits scattergate's milter sends for a sender it could not prove;
# "header": the same, and insert at the end of each message the Authentication-Results header
# scattergate's milter adds for this load when SPF and DKIM are on
MODE = sys.argv[2] if len(sys.argv) > 2 else ""
QUIET = MODE in ("quiet", "never", "header")
NEVER = MODE == "never"
HEADER = MODE == "header"
ACTIONS = (mc.ACT_DELRCPT | mc.ACT_ADDRCPT_PAR) if NEVER else mc.ACT_ADDHDRS if HEADER else 0
RESULTS = ("postfix.test.example; spf=pass smtp.mailfrom=sender@example.net; dkim=none"
           ' reason="no signature"; dmarc=none reason="no DMARC record" header.from=example.net')
NR = (mc.P_NR_CONN | mc.P_NR_HELO | mc.P_NR_MAIL | mc.P_NR_DATA | mc.P_NR_HDR | mc.P_NR_EOH
      | mc.P_NR_BODY | mc.P_NR_UNKN) if QUIET else 0
ANSWERED = (mc.Rcpt, mc.EndOfMessage) if QUIET else None
async def serve(reader, writer):
    # The same socket options as scattergate's milter, so the rows differ only in the work:
    # without QUICKACK, the steps Postfix sends unanswered wait for a delayed ACK.
    import socket
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = mc.Decoder()
    recipients = []
    while data := await reader.read(65536):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        out = []
        for cmd in decoder.feed(data):
            if isinstance(cmd, mc.OptNeg):
                out.append(mc.encode(mc.OptNegReply(ACTIONS & cmd.actions, (mc.P_NOUNKNOWN | NR) & cmd.protocol)))
            elif HEADER and isinstance(cmd, mc.EndOfMessage):
                out.append(mc.encode(mc.InsertHeader(0, "Authentication-Results", RESULTS)))
                out.append(CONT)
            elif NEVER and isinstance(cmd, mc.Rcpt):
                recipients.append(cmd.path)
                out.append(CONT)
            elif NEVER and isinstance(cmd, mc.EndOfMessage):
                for path in recipients:
                    out.append(mc.encode(mc.DeleteRecipient(path)))
                    out.append(mc.encode(mc.AddRecipient(path, ("NOTIFY=NEVER",))))
                recipients.clear()
                out.append(CONT)
            elif isinstance(cmd, mc.Quit):
                writer.close(); return
            elif ANSWERED is not None:
                if isinstance(cmd, ANSWERED):
                    out.append(CONT)
            elif not isinstance(cmd, (mc.Macros, mc.Abort)):
                out.append(CONT)
        if out:
            writer.write(b"".join(out))
    writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.Runner(loop_factory=new_event_loop).run(main())
'''


DO_NOTHING = "+ do-nothing milter on our codec, replies only at RCPT/end"
DO_NOTHING_NEVER = "+ the same, asking NOTIFY=NEVER for every recipient (scattergate's edits)"
DO_NOTHING_HEADER = "+ the same, inserting an Authentication-Results header (scattergate's edit)"
SCATTERGATE = "+ scattergate milter (inet)"
# What --no-auth adds to scattergate's configuration; as shipped SPF and DKIM are on.
AUTH_OFF = "[auth]\nspf = false\ndkim = false\n"
BASELINE = "+ scattergate milter (inet), --baseline-src tree"


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    return sum(cpu_times(pid))


def wait_connectable(target: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            if target.startswith("/"):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.connect(target)
            else:
                socket.create_connection(("127.0.0.1", int(target)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="several messages per connection (smtp-source -d)")
    parser.add_argument("--no-auth", dest="auth", action="store_false",
                        help="scattergate with SPF and DKIM off (the default runs them, as shipped, against"
                             " a loopback DNS server that publishes the sender's SPF)")
    parser.add_argument("--toml", default="", metavar="TEXT",
                        help='extra scattergate config, e.g. \'[backscatter]\nmode = "off"\'')
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row, order rotated; medians")
    parser.add_argument("--rows", default="", metavar="N,N,...",
                        help="run only these rows (0 = Postfix alone, always run as the baseline)")
    parser.add_argument("--baseline-src", default="", metavar="DIR",
                        help="A/B: also run the scattergate milter from this source tree (e.g. an unpacked"
                             " `git archive main src`, give DIR/src) in the same run")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found: run scripts/test once (it installs Postfix)", file=sys.stderr)
            return 2

    work = Path(tempfile.mkdtemp(prefix="sg-mbench-"))
    work.chmod(0o755)  # Postfix's daemons run as 'postfix' and must reach their queue and sockets
    (work / "recipients").write_text("user@example.org\n")
    # As shipped (the neutral harness's "default settings"): SPF and DKIM on, answered by a DNS
    # server on loopback that publishes the sender's SPF (smtp-source's example.net: 127/8 passes).
    (work / "sg.toml").write_text(("" if args.auth else AUTH_OFF) + textwrap.dedent(f"""\
        [state]
        data_dir = "{work / 'sg'}"
        [logging]
        level = "warning"
        file = ""
        """) + args.toml.replace("\\n", "\n") + "\n")
    sink = CountingSink()
    dns = DnsTestServer(SENDER_SPF_ZONE).start()
    processes: list[subprocess.Popen[bytes]] = []
    ports = {name: free_port() for name in ("pymilter", "codec", "codec_quiet", "codec_edits", "sg", "sg_replies", "sg_nobs", "sg_policy", "sg_base")}
    (work / "sg-replies.toml").write_text((work / "sg.toml").read_text() + "[postfix]\nmilter_skip_replies = false\n")
    nobs = (work / "sg.toml").read_text()
    nobs = nobs + ("" if "[backscatter]" in nobs else "[backscatter]\n") + 'mode = "off"\n'
    (work / "sg-nobs.toml").write_text(nobs)
    unix_path = str(work / "sg-milter.sock")

    started_cpu: dict[str, float] = {}
    started_split: dict[str, tuple[float, float]] = {}
    by_name: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(command: list[str], target: str, name: str) -> None:
        if command[1:3] == ["-m", "scattergate"]:
            # Metrics on, as a site would run it; each service on its own HTTP port.
            command = [*command, "--http-listen", f"127.0.0.1:{free_port()}"]
        env = None
        if name == "sg_base":  # the other source tree first on the path, ahead of the installed one
            env = {**os.environ, "PYTHONPATH": str(Path(args.baseline_src).resolve())}
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=work, env=env)
        processes.append(process)
        wait_connectable(target, process)
        by_name[name], started_cpu[name] = process, cpu_seconds(process.pid)
        started_split[name] = cpu_times(process.pid)

    sg = [sys.executable, "-m", "scattergate"]
    # Behind Postfix no recipient list is needed (Postfix validates recipients): as documented.
    common = ["--config", str(work / "sg.toml"), "--domain", "example.org", "--dns", f"127.0.0.1:{dns.port}"]
    rows = [
        ("Postfix alone", {}, ""),
        ("+ trivial pymilter (libmilter, threads)", {"smtpd_milters": f"inet:127.0.0.1:{ports['pymilter']}"}, "pymilter"),
        ("+ trivial milter on our codec (asyncio)", {"smtpd_milters": f"inet:127.0.0.1:{ports['codec']}"}, "codec"),
        (DO_NOTHING, {"smtpd_milters": f"inet:127.0.0.1:{ports['codec_quiet']}"}, "codec_quiet"),
        (SCATTERGATE, {"smtpd_milters": f"inet:127.0.0.1:{ports['sg']}"}, "sg"),
        (DO_NOTHING_HEADER if args.auth else DO_NOTHING_NEVER,
         {"smtpd_milters": f"inet:127.0.0.1:{ports['codec_edits']}"}, "codec_edits"),
        ("+ scattergate milter (unix socket)", {"smtpd_milters": f"unix:{unix_path}"}, "sg_unix"),
        ("+ scattergate milter (inet, every step answered)", {"smtpd_milters": f"inet:127.0.0.1:{ports['sg_replies']}"}, "sg_replies"),
        ("+ scattergate milter (inet, backscatter check off)", {"smtpd_milters": f"inet:127.0.0.1:{ports['sg_nobs']}"}, "sg_nobs"),
        ("+ scattergate policy service", {"smtpd_recipient_restrictions":
                                          f"check_policy_service inet:127.0.0.1:{ports['sg_policy']},"
                                          " permit_mynetworks, reject_unauth_destination"}, "sg_policy"),
    ]
    if args.baseline_src:
        rows.append((BASELINE, {"smtpd_milters": f"inet:127.0.0.1:{ports['sg_base']}"}, "sg_base"))
    if importlib.util.find_spec("Milter") is None:  # pymilter needs libmilter-dev to build
        print("pymilter is not installed: its row is left out", file=sys.stderr)
        rows = [row if row[2] != "pymilter" else (row[0], row[1], "") for row in rows]
        skipped = {1}
    else:
        skipped = set()
    if args.rows:
        # Postfix alone, the do-nothing milter on our codec and scattergate's milter always run:
        # the comparison below is between them, in the same run.
        chosen = {0, 3, 4, 5} | {int(n) for n in args.rows.split(",")}
        if args.baseline_src:
            chosen.add(len(rows) - 1)
        rows = [row for index, row in enumerate(rows) if index in chosen and index not in skipped]
    else:
        rows = [row for index, row in enumerate(rows) if index not in skipped]
    listen_ports = [free_port() for _ in rows]
    seconds: dict[int, list[float]] = {index: [] for index in range(len(rows))}
    try:
        (work / "pymilter_trivial.py").write_text(PYMILTER)
        (work / "codec_trivial.py").write_text(OWN_CODEC)
        wanted = {name for _, _, name in rows}
        commands = {
            "pymilter": ([sys.executable, str(work / "pymilter_trivial.py"), str(ports["pymilter"])], str(ports["pymilter"])),
            "codec": ([sys.executable, str(work / "codec_trivial.py"), str(ports["codec"])], str(ports["codec"])),
            "codec_quiet": ([sys.executable, str(work / "codec_trivial.py"), str(ports["codec_quiet"]), "quiet"],
                            str(ports["codec_quiet"])),
            "codec_edits": ([sys.executable, str(work / "codec_trivial.py"), str(ports["codec_edits"]),
                             "header" if args.auth else "never"],
                            str(ports["codec_edits"])),
            "sg": ([*sg, "milter", *common, "--listen", f"inet:127.0.0.1:{ports['sg']}"], str(ports["sg"])),
            "sg_replies": ([*sg, "milter", "--config", str(work / "sg-replies.toml"), *common[2:],
                            "--listen", f"inet:127.0.0.1:{ports['sg_replies']}", "--data-dir", str(work / "sg-replies")],
                           str(ports["sg_replies"])),
            "sg_nobs": ([*sg, "milter", "--config", str(work / "sg-nobs.toml"), *common[2:],
                         "--listen", f"inet:127.0.0.1:{ports['sg_nobs']}", "--data-dir", str(work / "sg-nobs")],
                        str(ports["sg_nobs"])),
            "sg_unix": ([*sg, "milter", *common, "--listen", f"unix:{unix_path}", "--socket-mode", "666",
                         "--data-dir", str(work / "sg-unix")], unix_path),
            "sg_base": ([*sg, "milter", *common, "--listen", f"inet:127.0.0.1:{ports['sg_base']}",
                         "--data-dir", str(work / "sg-base")], str(ports["sg_base"])),
            "sg_policy": ([*sg, "policy", *common, "--listen", f"inet:127.0.0.1:{ports['sg_policy']}",
                           "--data-dir", str(work / "sg-policy")], str(ports["sg_policy"])),
        }
        for name, (command, target) in commands.items():
            if name in wanted:
                spawn(command, target, name)
        postfix = ListenerPostfix(
            work / "postfix", port=listen_ports[0],
            settings={
                "relay_domains": "example.org",
                "transport_maps": f"inline:{{ {{example.org = relay:[127.0.0.1]:{sink.port}}} }}",
                "default_process_limit": "100",
                "milter_default_action": "tempfail",
            },
            listeners={port: overrides for port, (_, overrides, _) in zip(listen_ports[1:], rows[1:])},
        )
        postfix.start()
        try:
            for round_no in range(args.rounds):
                # Rotate the order every round: a row that always ran first (or last) would
                # carry whatever the disk and the queue were doing at that moment.
                order = [(i + round_no) % len(rows) for i in range(len(rows))]
                for index in order:
                    seconds[index].append(run_load(f"127.0.0.1:{listen_ports[index]}", args, sink))
        finally:
            postfix.stop()
        cpu_ms = {name: (cpu_seconds(process.pid) - started_cpu[name]) * 1000 / (args.messages * args.rounds)
                  for name, process in by_name.items()}
        # Split user/system: system time is the kernel's share (socket calls, TCP on loopback).
        split_ms = {name: tuple((now - then) * 1000 / (args.messages * args.rounds)
                                for now, then in zip(cpu_times(process.pid), started_split[name]))
                    for name, process in by_name.items()}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
        sink.stop()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.messages} messages x {args.size} bytes, {args.sessions} sessions"
          f"{', connections reused' if args.reuse else ', one connection per message'}"
          f", scattergate SPF/DKIM {'on' if args.auth else 'off'}, {args.rounds} round(s), order rotated\n")
    print("| setup | msg/s (median) | vs Postfix alone (median) | per round | milter CPU ms/msg | user / sys |")
    print("|---|---:|---:|---|---:|---|")
    base = seconds[0]
    for index, (label, _, name) in enumerate(rows):
        ratios = [b / s for b, s in zip(base, seconds[index])]
        rates = [args.messages / s for s in seconds[index]]
        cpu = f"{cpu_ms[name]:.2f}" if name in cpu_ms else "-"
        split = f"{split_ms[name][0]:.2f} / {split_ms[name][1]:.2f}" if name in split_ms else "-"
        print(f"| {label} | {statistics.median(rates):,.0f} | {statistics.median(ratios):.2f}x"
              f" | {', '.join(f'{r:.2f}' for r in ratios)} | {cpu} | {split} |")
    labels = [label for label, _, _ in rows]
    nothing, ours = seconds[labels.index(DO_NOTHING)], seconds[labels.index(SCATTERGATE)]
    versus = [n / o for n, o in zip(nothing, ours)]
    print(f"\nPostfix + scattergate milter vs Postfix + do-nothing milter on our codec (same replies): "
          f"{statistics.median(versus):.2f}x median (per round {', '.join(f'{v:.2f}' for v in versus)}"
          f"{spread(versus)}); "
          f"target >= 0.90x. Milter CPU per message: scattergate {cpu_ms['sg']:.2f} ms, "
          f"do-nothing {cpu_ms['codec_quiet']:.2f} ms"
          + (f", baseline tree {cpu_ms['sg_base']:.2f} ms." if "sg_base" in cpu_ms else "."))
    with_edits = seconds[labels.index(DO_NOTHING_HEADER if args.auth else DO_NOTHING_NEVER)]
    versus_edits = [n / o for n, o in zip(with_edits, ours)]
    edits = "inserts the Authentication-Results header" if args.auth else "asks NOTIFY=NEVER for every recipient"
    print(f"The same against the do-nothing milter that also {edits} (what "
          f"Postfix does to apply scattergate's edits, taken out): {statistics.median(versus_edits):.2f}x median "
          f"(per round {', '.join(f'{v:.2f}' for v in versus_edits)}{spread(versus_edits)}).")
    return 0


def spread(ratios: list[float]) -> str:
    """The rounds' mean and standard deviation: on a 2-core machine one round's ratio moves by
    several hundredths, so a median of three says little about a 0.90 line; pool the rounds of
    several runs to judge one."""
    if len(ratios) < 2:
        return ""
    return f"; mean {statistics.fmean(ratios):.3f}, sd {statistics.stdev(ratios):.3f}"


if __name__ == "__main__":
    sys.exit(main())
