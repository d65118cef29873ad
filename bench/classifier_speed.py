"""Classifier speed on typical mail and on real bounces, one process, messages in memory.

    PYTHONPATH=src python bench/classifier_speed.py [--corpora /work/shared/corpora] [--runs 3]
    PYTHONPATH=src python bench/classifier_speed.py --against main [--runs 6]   # before/after

With `--against REF` the classifier of git revision REF (its `src/scattergate/bounce`, exported
to a temporary directory as `scattergate_ref.bounce`) and the working tree's run in this one
process, their passes interleaved and the order flipped every run, so both see the same machine
load; the table gives CPU µs/msg per class for each side (best and median of the runs). On a
shared machine the best run is the steadier figure: load only ever adds time.

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
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
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


def load_reference(ref: str, into: Path) -> Callable[..., object]:
    """The classify() of git revision REF, importable beside this one: its `bounce` package is
    exported as `scattergate_ref.bounce` (the classifier imports only within that package)."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", ref, "src/scattergate/bounce"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "scattergate_ref"
    (into / "src" / "scattergate").rename(package)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(into))
    return importlib.import_module("scattergate_ref.bounce.classify").classify  # type: ignore[no-any-return]


def compare(ref: str, corpora: Path, runs: int) -> str:
    """Before (git REF) and after (working tree) in one process, passes interleaved (the order
    flips every run) so that both see the same load; CPU µs/msg, best and median of the runs."""
    classes = load(corpora)
    with tempfile.TemporaryDirectory() as tmp:
        sides: dict[str, Callable[..., object]] = {"before": load_reference(ref, Path(tmp)), "after": classify}
        for fn in sides.values():  # warm-up
            for msgs in classes.values():
                for raw, sender in msgs[:50]:
                    fn(raw, sender)
        cpu: dict[tuple[str, str], list[float]] = {(c, side): [] for c in classes for side in sides}
        for run in range(runs):
            order = list(sides) if run % 2 == 0 else list(reversed(sides))
            for name, msgs in classes.items():
                for side in order:
                    fn = sides[side]
                    c0 = time.process_time()
                    for raw, sender in msgs:
                        fn(raw, sender)
                    cpu[(name, side)].append(1e6 * (time.process_time() - c0) / len(msgs))
    lines = [f"before = {ref}, after = working tree; CPU µs/msg over {runs} interleaved runs (best / median)",
             "", "| class | before µs/msg | after µs/msg | change (best) | change (median) | after msg/s (best) |",
             "|---|---:|---:|---:|---:|---:|"]
    weights = {name: len(msgs) for name, msgs in classes.items()}
    groups = [(name, [name]) for name in classes] + [("typical (ham + spam)", ["ham", "spam"]),
                                                   ("all", list(classes))]
    for label, names in groups:
        total = sum(weights[n] for n in names)
        stat = {(side, f): sum(f(cpu[(n, side)]) * weights[n] for n in names) / total
                for side in sides for f in (min, statistics.median)}
        b, a = stat[("before", min)], stat[("after", min)]
        bm, am = stat[("before", statistics.median)], stat[("after", statistics.median)]
        lines.append(f"| {label} | {b:.0f} / {bm:.0f} | {a:.0f} / {am:.0f} | {100 * (a - b) / b:+.1f}% "
                     f"| {100 * (am - bm) / bm:+.1f}% | {1e6 / a:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--against", metavar="REF", help="also measure git revision REF, interleaved")
    args = ap.parse_args(argv)
    if args.against:
        print(compare(args.against, args.corpora, args.runs))
        return 0
    classes = load(args.corpora)
    print(table(measure(classes, args.runs), args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
