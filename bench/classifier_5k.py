"""The smtp-source-like message (400 lines "La de da de da N.", ordinary headers): CPU µs per
classify() call, git revision REF against the working tree, interleaved in one process.

    PYTHONPATH=src python bench/classifier_5k.py --against main [--runs 9]

This is the message the milter and SMTP proxy load tests send (smtp-source), where the
classifier is the largest per-message cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from classifier_speed import load_reference

from scattergate.bounce.classify import classify


def smtp_source_message(lines: int = 400) -> bytes:
    head = ("From: alice@example.org\nTo: bob@example.com\nDate: Fri, 04 Dec 2026 19:00:00 +0000\n"
            "Message-Id: <abc123@example.org>\nSubject: test message\n\n")
    return (head + "".join(f"La de da de da {i}.\n" for i in range(1, lines + 1))).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REF", required=True)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    raw = smtp_source_message()
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"before": load_reference(args.against, Path(tmp)), "after": classify}
        assert str(sides["before"](raw, "alice@example.org")) == str(classify(raw, "alice@example.org"))
        best = {side: float("inf") for side in sides}
        for run in range(args.runs):
            for side in (list(sides) if run % 2 == 0 else list(reversed(sides))):
                fn = sides[side]
                c0 = time.process_time()
                for _ in range(args.calls):
                    fn(raw, "alice@example.org")
                best[side] = min(best[side], 1e6 * (time.process_time() - c0) / args.calls)
    b, a = best["before"], best["after"]
    print(f"{len(raw)} bytes; CPU µs/call, best of {args.runs}: before ({args.against}) {b:.1f}, "
          f"after {a:.1f}, change {100 * (a - b) / b:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
