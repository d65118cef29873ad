"""Classifier speed on typical mail and on real bounces, one process, messages in memory.

    PYTHONPATH=src python bench/classifier_speed.py [--corpora /work/shared/corpora] [--runs 3]
    PYTHONPATH=src python bench/classifier_speed.py --against main [--rounds 3]   # before/after

With `--against REF` the classifier of git revision REF (its `src/`, exported to a temporary
directory) and the working tree's are measured alternately in fresh processes, `--rounds` times
each, so both see the same machine load; the table gives CPU µs/msg per class for each side (the
median over rounds of each round's median) and the change.

Classes:
- ham:      SpamAssassin easy-ham-1 + easy-ham-2 (ordinary person-to-person and list mail)
- spam:     SpamAssassin spam-1 + spam-2
- bounces:  sisimai maildir/bsd lhost-*/rhost-*/rfc3464-* (606 real MTA bounces, many large)

Every file is read into memory first; each run then calls `classify(raw, envelope_sender)` on every
message of a class in one single-threaded loop. The envelope sender is what the gateway would
pass at end of DATA, taken from the stored `Return-Path:` ("" for `<>`, None when absent).
Each run is timed both by wall clock and by this process's CPU time (`time.process_time`); the
table shows the median of the runs. On a shared machine the CPU-time figure is the fairer
"one core" number: wall time includes time spent waiting for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from scattergate.bounce.classify import classify

BOUNCE_PREFIXES = ("lhost-", "rhost-", "rfc3464-")
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*([^\r\n]*)", re.I | re.M)


def envelope_sender(raw: bytes) -> str | None:
    head = raw.split(b"\n\n", 1)[0]
    m = _RETURN_PATH.search(head)
    if not m:
        return None
    value = m.group(1).decode("latin-1").strip()
    return "" if value.replace(" ", "") == "<>" else value.strip("<>")


def load(root: Path) -> dict[str, list[tuple[bytes, str | None]]]:
    sa = root / "spamassassin-public"
    sis = root / "sisimai" / "maildir" / "bsd"

    def read(paths: list[Path]) -> list[tuple[bytes, str | None]]:
        out = []
        for p in paths:
            raw = p.read_bytes()
            out.append((raw, envelope_sender(raw)))
        return out

    return {
        "ham": read([p for f in ("easy-ham-1", "easy-ham-2") for p in sorted((sa / f).iterdir())]),
        "spam": read([p for f in ("spam-1", "spam-2") for p in sorted((sa / f).iterdir())]),
        "bounces": read([p for p in sorted(sis.glob("*.eml")) if p.name.startswith(BOUNCE_PREFIXES)]),
    }


def time_class(messages: list[tuple[bytes, str | None]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) for one pass over the messages."""
    w0, c0 = time.perf_counter(), time.process_time()
    for raw, sender in messages:
        classify(raw, sender)
    return time.perf_counter() - w0, time.process_time() - c0


def measure(classes: dict[str, list[tuple[bytes, str | None]]], runs: int) -> list[dict[str, object]]:
    for msgs in classes.values():  # warm-up: imports, regex compilation, caches
        for raw, sender in msgs[:50]:
            classify(raw, sender)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in classes}
    for _ in range(runs):
        for name, msgs in classes.items():
            samples[name].append(time_class(msgs))
    rows: list[dict[str, object]] = []
    typical_n = 0
    typical_wall: list[float] = []
    typical_cpu: list[float] = []
    all_wall: list[float] = []
    all_cpu: list[float] = []
    for i in range(runs):
        typical_wall.append(samples["ham"][i][0] + samples["spam"][i][0])
        typical_cpu.append(samples["ham"][i][1] + samples["spam"][i][1])
        all_wall.append(sum(samples[n][i][0] for n in classes))
        all_cpu.append(sum(samples[n][i][1] for n in classes))
    for name, msgs in classes.items():
        rows.append(_row(name, len(msgs), [s[0] for s in samples[name]], [s[1] for s in samples[name]]))
    typical_n = len(classes["ham"]) + len(classes["spam"])
    rows.append(_row("typical (ham + spam)", typical_n, typical_wall, typical_cpu))
    rows.append(_row("all", sum(len(m) for m in classes.values()), all_wall, all_cpu))
    return rows


def _row(name: str, n: int, walls: list[float], cpus: list[float]) -> dict[str, object]:
    wall = statistics.median(walls)
    cpu = statistics.median(cpus)
    return {"class": name, "n": n, "wall": wall, "cpu": cpu,
            "wall_rate": n / wall if wall else 0.0, "cpu_rate": n / cpu if cpu else 0.0,
            "spread": (min(n / w for w in walls), max(n / w for w in walls))}


def table(rows: list[dict[str, object]], runs: int) -> str:
    lines = [
        f"| class | messages | msg/s (CPU time, median of {runs}) | msg/s (wall, median of {runs}) "
        "| wall msg/s range | µs/msg (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["spread"]  # type: ignore[misc]
        lines.append(
            f"| {r['class']} | {r['n']} | {r['cpu_rate']:.0f} | {r['wall_rate']:.0f} "
            f"| {lo:.0f}–{hi:.0f} | {1e6 * r['cpu'] / r['n']:.0f} |"  # type: ignore[operator]
        )
    return "\n".join(lines)


def compare(ref: str, corpora: Path, runs: int, rounds: int) -> str:
    """Before (git REF) and after (working tree), alternating fresh processes under one load."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref, "src"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        sides = {"before": Path(tmp) / "src", "after": repo / "src"}
        results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(rounds):
            for side, src in sides.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--json", "--runs", str(runs), "--corpora", str(corpora)],
                    check=True, capture_output=True, text=True,
                    env={**os.environ, "PYTHONPATH": str(src)}).stdout
                results[side].append({r["class"]: 1e6 * r["cpu"] / r["n"] for r in json.loads(out)})
    lines = [f"before = {ref}, after = working tree; CPU µs/msg, median of {rounds} rounds × {runs} runs",
             "", "| class | before µs/msg | after µs/msg | change | after msg/s (CPU) |", "|---|---:|---:|---:|---:|"]
    for name in results["after"][0]:
        b = statistics.median(r[name] for r in results["before"])
        a = statistics.median(r[name] for r in results["after"])
        lines.append(f"| {name} | {b:.0f} | {a:.0f} | {100 * (a - b) / b:+.1f}% | {1e6 / a:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", metavar="REF", help="also measure git revision REF, alternately")
    ap.add_argument("--rounds", type=int, default=3, help="alternations with --against")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one side of --against
    args = ap.parse_args(argv)
    if args.against:
        print(compare(args.against, args.corpora, args.runs, args.rounds))
        return 0
    classes = load(args.corpora)
    rows = measure(classes, args.runs)
    print(json.dumps([{k: r[k] for k in ("class", "n", "cpu")} for r in rows]) if args.json
          else table(rows, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
