"""Same verdicts: the full Classification of git revision REF and of the working tree, compared.

    PYTHONPATH=src python bench/classifier_equal.py --against main [--corpora /work/shared/corpora]

Speed work on the classifier must not change any output. This runs both classifiers (REF's
`src/scattergate/bounce` exported as `scattergate_ref.bounce`, as bench/classifier_speed.py does)
over every file of tests/corpus/data/ and the shared corpora, each with several envelope senders
(unknown, null, the stored Return-Path, an ordinary address) and over mutated variants of each
file (a null Return-Path added, list headers added, an auto-reply header or subject added, the
body cut short, CRLF line ends), and compares every field: kind, confidence, evidence, extracted
ids, recipients, codes, Received chain. Prints each difference; exit status 1 if there is any.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from classifier_speed import envelope_sender, load_reference

from scattergate.bounce.classify import classify

REPO = Path(__file__).resolve().parent.parent
SENDERS_FIXED: tuple[str | None, ...] = (None, "", "someone@example.org")


def files(roots: list[Path]) -> Iterator[Path]:
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.stat().st_size <= 4 * 1024 * 1024:
                yield p


def mutations(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """Variants that move a message across the scoring rules' gates."""
    yield "as-is", raw
    yield "null-return-path", b"Return-Path: <>\n" + raw
    yield "list", b"List-Id: <x.lists.example.org>\nList-Unsubscribe: <mailto:x-request@example.org>\n" + raw
    yield "list-admin", b"List-Id: <x.example.org>\nTo: x-bounces@example.org\n" + raw
    yield "auto-submitted", b"Auto-Submitted: auto-replied\n" + raw
    yield "away-subject", b"Subject: Out of office: lunch\nThread-Topic: lunch\n" + raw
    yield "system-from", b"From: Mail Delivery System <MAILER-DAEMON@example.org>\n" + raw
    yield "x-mailer", b"X-Mailer: vacation 1.2\nPrecedence: bulk\n" + raw
    yield "short", raw[: max(1, len(raw) // 3)]
    yield "crlf", raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def compare(old: Callable[..., object], new: Callable[..., object], roots: list[Path], mutate: bool) -> int:
    fields = ("kind", "confidence", "evidence", "original_message_id", "original_sender", "original_from",
              "failed_recipients", "status_codes", "received_chain")
    checked = differences = 0
    for path in files(roots):
        raw = path.read_bytes()
        variants = mutations(raw) if mutate else iter((("as-is", raw),))
        for label, data in variants:
            for sender in (*SENDERS_FIXED, envelope_sender(data)):
                a, b = old(data, sender), new(data, sender)
                checked += 1
                va = tuple(str(getattr(a, f)) for f in fields)
                vb = tuple(str(getattr(b, f)) for f in fields)
                if va != vb:
                    differences += 1
                    diff = {f: (x, y) for f, x, y in zip(fields, va, vb) if x != y}
                    print(f"DIFF {path} [{label}] sender={sender!r}: {diff}")
    print(f"{checked} classifications compared, {differences} differences")
    return differences


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", metavar="REF", required=True)
    ap.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    ap.add_argument("--no-mutations", action="store_true")
    args = ap.parse_args(argv)
    roots = [REPO / "tests" / "corpus" / "data", args.corpora]
    with tempfile.TemporaryDirectory() as tmp:
        old = load_reference(args.against, Path(tmp))
        return 1 if compare(old, classify, roots, not args.no_mutations) else 0


if __name__ == "__main__":
    sys.exit(main())
