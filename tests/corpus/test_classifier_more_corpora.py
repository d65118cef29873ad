"""The classifier on the corpora added for issue 18 (provenance in each folder's README):
flufl.bounce's 2000-2003 bounces (old MTAs, list-relayed notices) and header-less auto-replies
in 14 languages, with human replies in the same languages that must stay `none`."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path

import pytest

from scattergate.bounce.classify import Classification, Kind, classify

DATA = Path(__file__).parent / "data"
FLUFL = DATA / "flufl-bounce"
AUTO = DATA / "autoreply-multilingual"


def _addr(a: str) -> str:
    return a.strip().strip("<>").strip().strip(".").lower()


@cache
def _flufl() -> dict[str, Classification]:
    return {p.name: classify(p.read_bytes()) for p in sorted(FLUFL.glob("*.txt"))}


def test_flufl_bounces_recognised_at_least_99_percent() -> None:
    results = _flufl()
    assert len(results) == 103
    missed = [n for n, c in results.items() if not c.is_bounce]
    assert len(missed) / len(results) <= 0.01, missed


def test_flufl_failed_recipients_exact_at_least_93_percent() -> None:
    expected = json.loads((FLUFL / "expected.json").read_text())
    wrong = {}
    for name, entry in expected.items():
        got = {_addr(a) for a in _flufl()[name].failed_recipients}
        if got != {_addr(a) for a in entry["recipients"]}:
            wrong[name] = sorted(got)
    assert len(expected) == 101
    assert 1 - len(wrong) / len(expected) >= 0.93, wrong


def test_extracted_addresses_carry_no_prefix_quote_or_upper_case_domain() -> None:
    for name, c in _flufl().items():
        for a in c.failed_recipients:
            local, _, domain = a.rpartition("@")
            assert domain == domain.lower(), (name, a)
            assert not a.lower().startswith(("smtp=", "rfc822;", "'", '"', "<")), (name, a)


def _rows() -> list[dict[str, str]]:
    with (AUTO / "index.tsv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_the_auto_reply_corpus_covers_at_least_eight_languages() -> None:
    assert len({r["language"] for r in _rows() if r["expect"] == "auto"}) >= 8


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["file"])
def test_multilingual_auto_replies_and_human_replies(row: dict[str, str]) -> None:
    c = classify((AUTO / row["file"]).read_bytes())
    want = Kind.AUTO_REPLY if row["expect"] == "auto" else Kind.NONE
    assert c.kind is want, c.evidence
    assert c.failed_recipients == ()
