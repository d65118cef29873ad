"""`classify(..., kind_only=True)`: what the backscatter check asks for a non-null sender. The
bounce and auto-reply tables read last are skipped when their points cannot lift their kind to
its minimum; the kind must never change, nor anything of a result that is not `none`."""

from __future__ import annotations

from pathlib import Path

import pytest

from scattergate.bounce.classify import Kind, classify
from scattergate.bounce.classify import rules as R

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "data"


def _variants(raw: bytes) -> list[tuple[bytes, str | None]]:
    """The message with an ordinary sender (how the backscatter check asks) and with none
    known, and versions of it moved across the scoring gates."""
    head, sep, body = raw.partition(b"\n\n")
    moved = [
        b"Return-Path: <>\n" + raw,
        b"Auto-Submitted: auto-replied\n" + raw,
        b"Subject: Out of office\n" + raw,
        b"From: Mail Delivery System <MAILER-DAEMON@example.net>\n" + raw,
        b"List-Id: <list.example.org>\n" + raw,
        # Two auto-reply points before the body is read: an away notice in it makes the minimum.
        b"Precedence: bulk\nX-Auto-Response-Suppress: All\n" + raw,
        head + sep + body[:600],
    ]
    return [(raw, None), (raw, "someone@example.org")] + [(m, "someone@example.org") for m in moved]


def test_kind_only_never_changes_the_kind_nor_a_result_that_is_not_none() -> None:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.stat().st_size <= 1_000_000)
    assert len(files) > 1000, "the test corpus is missing"
    compared = skipped_reads = 0
    for path in files:
        for raw, sender in _variants(path.read_bytes()):
            full = classify(raw, sender)
            fast = classify(raw, sender, kind_only=True)
            assert fast.kind is full.kind, (path, sender)
            if full.kind is not Kind.NONE:
                assert fast == full, (path, sender)
            elif fast.confidence != full.confidence:
                skipped_reads += 1
            compared += 1
    assert compared > 8_000
    # The skipped tables mattered to some `none` results' confidence: the fast path was taken.
    assert skipped_reads > 0


class _Counting:
    """A Guarded table that counts its reads."""

    def __init__(self, table: R.Guarded) -> None:
        self.table, self.reads = table, 0

    def exists(self, *args: object) -> bool:
        self.reads += 1
        return self.table.exists(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind_only, reads", [(False, 1), (True, 0)])
def test_ordinary_mail_skips_the_weak_and_away_tables_only_when_asked(
        monkeypatch: pytest.MonkeyPatch, kind_only: bool, reads: int) -> None:
    weak, away = _Counting(R.G_BOUNCE_PHRASE_WEAK), _Counting(R.G_AUTO_BODY)
    monkeypatch.setattr(R, "G_BOUNCE_PHRASE_WEAK", weak)
    monkeypatch.setattr(R, "G_AUTO_BODY", away)
    raw = (b"From: <carol@example.org>\nTo: <dan@example.net>\nSubject: lunch\n\n"
           b"Shall we meet at noon? The mailbox is full of invoices again.\n")
    assert classify(raw, "carol@example.org", kind_only=kind_only).kind is Kind.NONE
    assert (weak.reads, away.reads) == (reads, reads)
