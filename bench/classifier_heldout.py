"""Per-corpus recognition and recipient accuracy of the classifier, held-out style.

    PYTHONPATH=src python bench/classifier_heldout.py [--corpora /work/shared/corpora] [--misses]

Prints one row per corpus: how many messages of the expected kind were recognised, and for
bounces with a reference recipient list, how often the extracted failed recipients equal it
exactly (addresses compared lower-cased, without angle brackets or trailing dots). Ordinary-mail
corpora report the messages flagged (any kind but `none`) instead: there the target is 0.

Corpora: the sisimai copy and the flufl.bounce copy in tests/corpus/data (each with its expected
answers), the multilingual auto-replies in tests/corpus/data/autoreply-multilingual, the
SpamAssassin ham/spam copies; and, when --corpora points at the shared corpora, the full
sisimai (maildir and mbox) and SpamAssassin sets, the auto-reply index, and the DKIM/ARC suites'
messages as more ordinary mail. A corpus missing on this machine is skipped, not failed.
Unlike bench/classifier_corpus.py (sisimai in depth), this script treats each corpus the same
way, as one would measure a set never seen before.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scattergate.bounce.classify import Classification, Kind, classify

TESTS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "data"
PLACEHOLDER = "undisclosed-recipient-in-headers@libsisimai.org.invalid"  # sisimai's "none found"
BOUNCE_PREFIXES = ("lhost-", "rhost-", "rfc3464-")


def norm_addr(value: str) -> str:
    return value.strip().strip("<>").strip().strip(".").lower()


@dataclass
class Case:
    label: str
    raw: bytes
    expect: str  # "bounce" | "auto" | "feedback" | "none"
    recipients: frozenset[str] | None = None  # None: no reference to compare with


@dataclass
class Row:
    corpus: str
    expect: str
    n: int = 0
    recognised: int = 0
    rcpt_n: int = 0
    rcpt_exact: int = 0
    misses: list[str] = field(default_factory=list)


def got(c: Classification) -> str:
    return {Kind.DSN: "bounce", Kind.BOUNCE: "bounce", Kind.AUTO_REPLY: "auto",
            Kind.FEEDBACK: "feedback", Kind.CHALLENGE: "challenge"}.get(c.kind, "none")


def _refs(values: list[str]) -> frozenset[str] | None:
    refs = frozenset(norm_addr(a) for a in values if norm_addr(a) != PLACEHOLDER)
    return refs or None


def sisimai(folder: Path, reference: dict[str, dict[str, list[str]]]) -> Iterator[Case]:
    for path in sorted(folder.glob("*.eml")):
        if not path.name.startswith(BOUNCE_PREFIXES + ("rfc3834-", "arf-")):
            continue
        ref = reference.get(path.name, {})
        expect = ("auto" if path.name.startswith("rfc3834-") else
                  "feedback" if path.name.startswith("arf-") or ref.get("reasons") == ["feedback"] else
                  "bounce")
        recipients = _refs(ref.get("recipients", [])) if expect != "auto" else None
        yield Case(path.name, path.read_bytes(), expect, recipients)


def flufl(folder: Path) -> Iterator[Case]:
    expected = json.loads((folder / "expected.json").read_text())
    for path in sorted(folder.glob("*.txt")):
        refs = expected.get(path.name, {}).get("recipients")
        yield Case(path.name, path.read_bytes(), "bounce", _refs(refs) if refs else None)


def labelled(folder: Path) -> Iterator[Case]:
    """A folder with `index.tsv`: file, expected kind (and recipients, space-separated)."""
    with (folder / "index.tsv").open(newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            recipients = row.get("recipients") or ""
            yield Case(row["file"], (folder / row["file"]).read_bytes(), row["expect"],
                       _refs(recipients.split()) if recipients else None)


def plain(folders: list[Path], expect: str = "none") -> Iterator[Case]:
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith((".", "cmds")):
                yield Case(f"{folder.name}/{path.name}", path.read_bytes(), expect)


def automated(tsv: Path) -> set[str]:
    """File names of the hand-labelled machine-generated rows in the ham folders: not plain ham."""
    return {line.split("\t", 1)[0].rsplit("/", 1)[-1]
            for line in tsv.read_text().splitlines() if line.strip() and not line.startswith("#")}


def corpora(shared: Path | None) -> Iterator[tuple[str, Iterator[Case]]]:
    sis_ref = json.loads((TESTS / "sisimai" / "reference.json").read_text())["files"]
    yield "tests: sisimai bsd", sisimai(TESTS / "sisimai" / "bsd", sis_ref)
    yield "tests: flufl.bounce", flufl(TESTS / "flufl-bounce")
    if (TESTS / "autoreply-multilingual").is_dir():
        yield "tests: auto-replies, multilingual", labelled(TESTS / "autoreply-multilingual")
    sa = TESTS / "spamassassin"
    skip = automated(sa / "automated-messages-in-ham.tsv")
    ham = (c for c in plain([sa / "ham"]) if c.label.split("/", 1)[1] not in skip)
    yield "tests: spamassassin ham", ham
    yield "tests: spamassassin spam", plain([sa / "spam"])
    if shared is None or not shared.is_dir():
        return
    sis = shared / "sisimai"
    ref = json.loads((sis / "sisimai-go-reference-output.json").read_text())["results"]
    labels = json.loads((sis / "expected-labels.json").read_text())["labels"]
    full: dict[str, dict[str, list[str]]] = {}
    for rel, entry in ref.items():
        facts = (entry or {}).get("facts") or []
        full[Path(rel).name] = {
            "recipients": [f["recipient"] for f in facts if f.get("recipient")]
            + list((labels.get(rel) or {}).get("sisimai_go_recipients") or []),
            "reasons": sorted({f.get("reason", "") for f in facts}),
        }
    for sub in ("bsd", "dos", "mac"):
        yield f"shared: sisimai {sub}", sisimai(sis / "maildir" / sub, full)
    spa = shared / "spamassassin-public"
    skip = automated(spa / "automated-messages-in-ham.tsv")
    yield "shared: spamassassin ham", (c for c in plain([spa / "easy-ham-1", spa / "easy-ham-2"])
                                         if c.label.split("/", 1)[1] not in skip)
    yield "shared: spamassassin spam", plain([spa / "spam-1", spa / "spam-2"])
    yield "shared: autoreply-index.tsv", index_rows(shared)
    yield "shared: sisimai mailbox/ (mbox)", mbox_bounces(sis / "mailbox")
    dkim = shared / "dkim-arc"
    yield "shared: dkim-arc messages", (c for c in plain_tree(dkim) if b"From:" in c.raw)


def mbox_bounces(folder: Path) -> Iterator[Case]:
    """sisimai's mbox files: every message in them is a bounce (one a person's "Fwd:" of one)."""
    import mailbox
    for path in sorted(folder.iterdir()):
        for i, msg in enumerate(mailbox.mbox(str(path))):
            yield Case(f"{path.name}#{i}", msg.as_bytes(), "bounce")


def plain_tree(root: Path) -> Iterator[Case]:
    """Ordinary signed test messages (DKIM/ARC suites): none of them is a notification."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".txt", ".eml", ".msg") and path.stat().st_size < 1 << 20:
            yield Case(str(path.relative_to(root)), path.read_bytes(), "none")


def index_rows(shared: Path) -> Iterator[Case]:
    for line in (shared / "autoreply-index.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        rel, expected = line.split("\t")[:2]
        path = shared / rel
        if path.exists() and expected.startswith(("autoreply", "human")):
            yield Case(rel, path.read_bytes(), "auto" if expected.startswith("autoreply") else "none")


def measure(name: str, cases: Iterator[Case]) -> Row:
    row = Row(name, "")
    kinds = set()
    for case in cases:
        kinds.add(case.expect)
        c = classify(case.raw)
        row.n += 1
        if got(c) == case.expect:
            row.recognised += 1
        else:
            row.misses.append(f"{case.label}: {got(c)} {c.evidence}")
        if case.recipients is not None and got(c) == case.expect:
            row.rcpt_n += 1
            found = frozenset(norm_addr(a) for a in c.failed_recipients)
            if found == case.recipients:
                row.rcpt_exact += 1
            else:
                row.misses.append(f"{case.label}: recipients {sorted(found)} != {sorted(case.recipients)}")
        elif case.recipients is not None:
            row.rcpt_n += 1
    row.expect = "/".join(sorted(kinds))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    ap.add_argument("--misses", action="store_true", help="list every disagreement")
    args = ap.parse_args(argv)
    rows = [measure(name, cases) for name, cases in corpora(args.corpora)]
    print("| corpus | expected | recognised | recipients exact |")
    print("|---|---|---:|---:|")
    for r in rows:
        pct = f"{r.recognised}/{r.n} ({100.0 * r.recognised / r.n:.1f}%)" if r.n else "n/a"
        if r.expect == "none":
            pct = f"flagged {r.n - r.recognised}/{r.n}"
        rc = f"{r.rcpt_exact}/{r.rcpt_n} ({100.0 * r.rcpt_exact / r.rcpt_n:.1f}%)" if r.rcpt_n else "—"
        print(f"| {r.corpus} | {r.expect} | {pct} | {rc} |")
    if args.misses:
        for r in rows:
            for m in r.misses:
                print(f"{r.corpus}: {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
