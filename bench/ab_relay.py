"""A/B: two or more builds of scattergate under the same relay load, alternating, one run.

    python bench/ab_relay.py HEAD~1 WORKTREE --mode spool --rounds 6
    python bench/ab_relay.py main my-branch --mode proxy --rounds 4 --postfix
    python bench/ab_relay.py HEAD HEAD@3 --mode spool --postfix   # same code, 2 and 3 workers

Each build (a git revision, or WORKTREE for the files as they are, optionally `@N` for N worker
processes instead of --workers) is exported to a temporary
directory and run as `scattergate serve --relay` (with `--spool` in spool mode) in front of
one smtp-sink, with the same checks and loopback DNS as bench/relay_throughput.py. Every
round sends the same smtp-source load to each build in turn, alternating the order; with
`--postfix` a private Postfix plain relay runs beside them. Printed per round and as medians:
msg/s by the client's clock (until smtp-source had its last 250) and by the sink's (until it had
counted the last message: a spool is still delivering when the client is done), and the CPU per message of each row (user + system time of its processes, read from
/proc; Postfix's daemons included), which moves less with the host's speed than throughput does.

Why: single runs on a shared 2-core machine move by ±30% with the host, so a change is only
measured against the code before it in the same run. Loopback only; bounded by --messages.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import relay_throughput as rt  # noqa: E402

WORKTREE = "WORKTREE"


def export_source(revision: str, into: Path) -> Path:
    """The `src` directory of `revision` (or of the working tree), copied under `into`."""
    into.mkdir(parents=True)
    if revision == WORKTREE:
        shutil.copytree(ROOT / "src", into / "src")
    else:
        archive = into / "src.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision, "src"],
                       check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
        archive.unlink()
    return into / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help=f"git revisions, or {WORKTREE}; REV@N runs N workers")
    parser.add_argument("--mode", choices=("proxy", "spool"), default="proxy")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=5120)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--workers", default="auto", help="worker processes per build (default: auto)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--postfix", action="store_true", help="a Postfix plain relay row beside the builds")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 1 <= args.messages <= 100_000:
        parser.error("--rounds 1..20 and --messages 1..100000 (a bounded load)")
    if len(set(args.builds)) != len(args.builds):
        parser.error("name each build once")
    if not rt.check_tools():
        return 2

    load = argparse.Namespace(sessions=args.sessions, size=args.size, messages=args.messages, reuse=False)
    warm_up = argparse.Namespace(sessions=args.sessions, size=args.size, messages=300, reuse=False)
    rows = [*args.builds, *(["Postfix"] if args.postfix else [])]
    rates: dict[str, list[float]] = {row: [] for row in rows}  # delivered: until the sink counted all
    accepted: dict[str, list[float]] = {row: [] for row in rows}  # until smtp-source had its last 250
    cpu: dict[str, list[float]] = {row: [] for row in rows}
    work = rt.bench_workdir("sg-ab-")
    sink = rt.CountingSink()
    try:
        with contextlib.ExitStack() as stack:
            targets: dict[str, rt.Running] = {}
            for index, build in enumerate(args.builds):
                revision, _, workers = build.partition("@")
                source = export_source(revision, work / f"build-{index}")
                targets[build] = stack.enter_context(rt.scattergate_relay(
                    work / f"gateway-{index}", sink.port, spool=args.mode == "spool", workers=workers or args.workers,
                    source=source))
            if args.postfix:
                targets["Postfix"] = stack.enter_context(rt.postfix_running(work / "postfix", sink.port))
            for row in rows:
                rt.run_load(targets[row].address, warm_up, sink)
            for round_ in range(args.rounds):
                for row in (rows if round_ % 2 == 0 else rows[::-1]):
                    until_accepted, seconds, cost = rt.measure(targets[row], load, sink)
                    rates[row].append(args.messages / seconds)
                    accepted[row].append(args.messages / until_accepted)
                    cpu[row].append(cost)
                    print(f"round {round_ + 1}: {row}: {accepted[row][-1]:,.0f} msg/s accepted, "
                          f"{rates[row][-1]:,.0f} delivered, {cost:.2f} ms CPU/msg", flush=True)
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.mode} mode, {args.messages} messages x {args.size} bytes, {args.sessions} sessions, "
          f"{args.workers} worker(s), medians of {args.rounds} rounds\n")
    print("| build | msg/s accepted | msg/s delivered | CPU ms/msg |"
          + (" ratio to Postfix, accepted | delivered |" if args.postfix else ""))
    print("|---|---:|---:|---:|" + ("---:|---:|" if args.postfix else ""))
    for row in rows:
        cost = f"{statistics.median(cpu[row]):.2f}"
        ratio = ""
        if args.postfix:
            ratio = "".join(f" {statistics.median(r / p for r, p in zip(clock[row], clock['Postfix'])):.2f}x |"
                            for clock in (accepted, rates))
        print(f"| {row} | {statistics.median(accepted[row]):,.0f} | {statistics.median(rates[row]):,.0f} | {cost} |{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
