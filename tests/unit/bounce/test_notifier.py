"""The notifier (bounce/notifier.py) applied to spooled messages that failed: a DSN to a proven
sender through the spool, or quarantine — with a real spool, quarantine and SQLite index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.bounce.dsn_rate import DsnRateLimiter, Rate
from scattergate.bounce.notifier import BounceNotifier
from scattergate.delivery.quarantine import Quarantine
from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry
from scattergate.state.sqlite import SqliteStore

CONTENT = b"From: a@sender.example\r\nSubject: hello\r\nMessage-ID: <m1@sender.example>\r\n\r\nHi.\r\n"


class Harness:
    def __init__(self, root: Path, *, per_address: int = 10) -> None:
        self.store = SqliteStore(root / "state.sqlite3")
        self.spool = Spool(root / "spool")
        self.quarantine = Quarantine(root / "quarantine", self.store)
        self.woken = 0
        self.counts: list[str] = []
        self.notifier = BounceNotifier(
            self.spool, self.quarantine,
            DsnRateLimiter(per_address=Rate.per_hour(per_address), per_domain=Rate.per_hour(100), clock=lambda: 0.0),
            reporting_mta="mx.test.example", max_return=1000, on_dsn=self.wake, count=self.counts.append,
        )

    def wake(self) -> None:
        self.woken += 1

    def dsns(self) -> list[tuple[SpoolEntry, bytes]]:
        found = []
        for entry in self.spool.entries():
            claim = self.spool.claim(entry.id)
            assert claim is not None
            found.append((claim.entry, claim.content()))
            claim.release()
        return found


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.store.close()


def failed_entry(*, spf: str | None = "pass", dkim: bool = False, verdict: str = "clean",
                 notify: list[str] | None = None, is_dsn: bool = False) -> tuple[SpoolEntry, list[SpooledRecipient]]:
    rcpt = SpooledRecipient("user@example.org", notify=notify, orcpt="rfc822;user@example.org",
                            reply="550 5.1.1 <user@example.org>: no such user")
    entry = SpoolEntry(sender="" if is_dsn else "a@sender.example", recipients=[rcpt], arrival=1_750_000_000.0,
                       spf_result=spf, dkim_aligned=dkim, content_verdict=verdict, is_dsn=is_dsn)
    return entry, [rcpt]


def test_a_proven_sender_gets_a_dsn_through_the_spool(harness: Harness) -> None:
    entry, failed = failed_entry()
    assert harness.notifier.failed(entry, CONTENT, failed, "downstream.example") == "dsn"
    ((dsn, data),) = harness.dsns()
    assert dsn.sender == "" and dsn.is_dsn  # never bounced itself
    assert [(r.address, r.notify) for r in dsn.recipients] == [("a@sender.example", ["NEVER"])]
    assert b"Action: failed" in data and b"Status: 5.1.1" in data and b"Original-Recipient: rfc822;user@example.org" in data
    assert harness.woken == 1 and harness.counts == ["dsn.sent.failure"]
    assert harness.store.quarantine_list() == []


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"spf": "softfail"}, "sender-unverified (spf=softfail, dkim=none)"),
    ({"spf": None}, "sender-unverified (spf=none, dkim=none)"),
    ({"verdict": "spam"}, "spam"),
    ({"notify": ["NEVER"]}, "notify-never"),
    ({"is_dsn": True}, "null-sender"),
])
def test_no_dsn_means_quarantine_with_the_reason(harness: Harness, kwargs: dict, reason: str) -> None:  # type: ignore[type-arg]
    entry, failed = failed_entry(**kwargs)
    assert harness.notifier.failed(entry, CONTENT, failed, "downstream.example") == f"quarantined: {reason}"
    assert harness.dsns() == [] and harness.woken == 0
    (item,) = harness.store.quarantine_list()
    assert item.reason == f"bounce suppressed: {reason}" and item.recipients == ("user@example.org",)
    assert harness.quarantine.content(item) == CONTENT  # kept whole, nothing lost
    assert harness.counts == ["dsn.suppressed.failure"]


def test_an_aligned_dkim_signature_alone_proves_the_sender(harness: Harness) -> None:
    entry, failed = failed_entry(spf="fail", dkim=True)
    assert harness.notifier.failed(entry, CONTENT, failed, "") == "dsn"


def test_per_recipient_notify_splits_dsn_and_quarantine(harness: Harness) -> None:
    told = SpooledRecipient("user@example.org", notify=["FAILURE"], reply="550 5.1.1 no")
    silent = SpooledRecipient("other@example.org", notify=["NEVER"], reply="550 5.1.1 no")
    entry = SpoolEntry(sender="a@sender.example", recipients=[told, silent], arrival=0.0, spf_result="pass")
    assert harness.notifier.failed(entry, CONTENT, [told, silent], "") == "quarantined: notify-never"
    ((_, data),) = harness.dsns()
    assert re.findall(rb"Final-Recipient: rfc822; ?(\S+)", data) == [b"user@example.org"]
    (item,) = harness.store.quarantine_list()
    assert item.recipients == ("other@example.org",)


def test_the_rate_limit_turns_further_dsns_into_quarantine(tmp_path: Path) -> None:
    harness = Harness(tmp_path, per_address=1)
    try:
        entry, failed = failed_entry()
        assert harness.notifier.failed(entry, CONTENT, failed, "") == "dsn"
        again, failed = failed_entry()
        assert harness.notifier.failed(again, CONTENT, failed, "") == "quarantined: rate-limited (address)"
        assert len(harness.dsns()) == 1
    finally:
        harness.store.close()


def test_an_unproven_delay_notice_is_suppressed_and_nothing_is_quarantined(harness: Harness) -> None:
    entry, pending = failed_entry(spf="none", notify=["DELAY"])
    for rcpt in pending:
        rcpt.reply = "451 4.2.0 mailbox busy"  # still pending: its last answer was temporary
    assert harness.notifier.delayed(entry, CONTENT, pending, "") == "suppressed: sender-unverified (spf=none, dkim=none)"
    assert harness.dsns() == [] and harness.store.quarantine_list() == []
    proven, pending = failed_entry(notify=["DELAY"])
    pending[0].reply = "451 4.2.0 mailbox busy"
    assert harness.notifier.delayed(proven, CONTENT, pending, "") == "dsn"
    ((_, data),) = harness.dsns()
    assert b"Action: delayed" in data
