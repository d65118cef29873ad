"""Classifier speed on typical mail and on real bounces, one process, messages in memory.

    PYTHONPATH=src python bench/classifier_speed.py [--corpora /work/shared/corpora] [--runs 3]

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
import re
import statistics
import sys
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    classes = load(args.corpora)
    print(table(measure(classes, args.runs), args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
