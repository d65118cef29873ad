"""The backscatter check and the BATV guard as units: evidence, kinds, modes (no sockets)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.address import parse_path
from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn
from scattergate.checks import CheckContext
from scattergate.checks.backscatter import BackscatterCheck, BatvGuard
from scattergate.model import Envelope, Finding, Session
from scattergate.outbound import BatvSettings, OutboundMarker, SentRegistry
from scattergate.rewrite import batv
from scattergate.rewrite.keys import BatvKeyring, Secret
from scattergate.state.sqlite import SqliteStore

SECRET = Secret(b"a site secret for these tests")
KEYRING = BatvKeyring.from_mapping({"0": SECRET}, current="0")
NOW = 1_750_000_000.0
ORIGINAL = b"From: alice@example.org\r\nSubject: lunch\r\nMessage-ID: <lunch@example.org>\r\n\r\nFree?\r\n"


def settings(mode: str = "enforce", **modes: str) -> BatvSettings:
    return BatvSettings(KEYRING, frozenset({"example.org"}), mode, modes)


def bounce(original: bytes = ORIGINAL) -> bytes:
    failed = FailedMessage(sender="alice@example.org", original=original,
                           recipients=[RecipientStatus("friend@remote.example", "5.1.1", diagnostic="550 5.1.1 unknown")],
                           reporting_mta="mx.remote.example", arrival=datetime.now(timezone.utc))
    return build_dsn(failed, now=datetime.now(timezone.utc)).data


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.sqlite3")
    yield store
    store.close()


def tagged(address: str = "alice@example.org", day: float = NOW) -> str:
    return batv.sign(address, KEYRING, batv.days_since_epoch(day))


# -- BATV at RCPT -------------------------------------------------------------------------------

NULL = parse_path("<>", allow_null=True)
SOMEONE = parse_path("<someone@remote.example>")


def inspect(guard: BatvGuard, sender, recipient: str):  # type: ignore[no-untyped-def]
    to, findings = guard.inspect(sender, parse_path(f"<{recipient}>"))
    return str(to), [f.key for f in findings]


def test_a_valid_tag_is_stripped_and_noted() -> None:
    guard = BatvGuard(settings(), clock=lambda: NOW)
    assert inspect(guard, NULL, tagged()) == ("alice@example.org", ["batv.valid"])


def test_a_bounce_to_an_untagged_or_badly_tagged_address() -> None:
    guard = BatvGuard(settings(), clock=lambda: NOW)
    assert inspect(guard, NULL, "alice@example.org") == ("alice@example.org", ["batv.missing"])
    expired = tagged(day=NOW - 30 * 86400)
    assert inspect(guard, NULL, expired) == ("alice@example.org", ["batv.invalid"])
    # Only bounces need the tag: ordinary mail with a bad tag is noted, not refused.
    assert inspect(guard, SOMEONE, expired) == ("alice@example.org", ["batv.bad_tag"])
    assert inspect(guard, SOMEONE, "alice@example.org") == ("alice@example.org", [])


def test_modes_per_address_and_domain() -> None:
    guard = BatvGuard(settings("enforce", **{"bob@example.org": "score", "other.example": "enforce"}), clock=lambda: NOW)
    assert inspect(guard, NULL, "bob@example.org") == ("bob@example.org", ["batv.unsigned"])
    assert inspect(guard, NULL, "carol@elsewhere.example") == ("carol@elsewhere.example", [])  # not ours
    off = BatvGuard(settings("off"), clock=lambda: NOW)
    assert inspect(off, NULL, tagged()) == ("alice@example.org", [])  # off: the tag is just removed


# -- the end-of-DATA check ----------------------------------------------------------------------

async def run(check: BackscatterCheck, sender: str, content: bytes, *, recipients: int = 1,
              trusted: bool = False, rcpt_findings: tuple[Finding, ...] = ()) -> list[str]:
    envelope = Envelope(parse_path(sender, allow_null=True))
    envelope.recipients = [parse_path(f"<user{i}@example.org>") for i in range(recipients)]
    envelope.rcpt_findings = list(rcpt_findings)
    ctx = CheckContext(Session("192.0.2.9", trusted=trusted), envelope, content=content)
    return [f"{f.key} {f.detail}" for f in await check(ctx)]


async def test_a_bounce_for_mail_we_never_sent_is_unsolicited(store: SqliteStore) -> None:
    check = BackscatterCheck(SentRegistry(store, keep_days=7), SECRET)
    (finding,) = await run(check, "<>", bounce())
    assert finding.startswith("backscatter.unsolicited kind=") and finding.endswith("original=lunch@example.org")


async def test_each_kind_of_evidence_makes_it_solicited(store: SqliteStore) -> None:
    registry = SentRegistry(store, keep_days=7)
    check = BackscatterCheck(registry, SECRET)
    # BATV: a valid tag was seen at RCPT.
    (finding,) = await run(check, "<>", bounce(), rcpt_findings=(Finding("batv", "valid", "alice@example.org"),))
    assert finding.startswith("backscatter.solicited") and finding.endswith("evidence=batv")
    # The registry: we remembered the original's Message-ID when it went out.
    marker = OutboundMarker(settings(), registry, SECRET)
    assert await marker.remember(parse_path("<alice@example.org>"), ORIGINAL) is not None
    (finding,) = await run(check, "<>", bounce())
    assert finding.endswith("evidence=registry")


async def test_the_token_is_evidence_when_the_registry_forgot(store: SqliteStore, tmp_path: Path) -> None:
    marker = OutboundMarker(settings(), SentRegistry(store, keep_days=7), SECRET)
    _, marked = await marker.mark(parse_path("<alice@example.org>"), ORIGINAL)
    forgetful = SqliteStore(tmp_path / "other.sqlite3")  # another site's registry: knows nothing
    try:
        check = BackscatterCheck(SentRegistry(forgetful, keep_days=7), SECRET)
        (finding,) = await run(check, "<>", bounce(marked))
        assert finding.endswith("evidence=token")
        stranger = BackscatterCheck(SentRegistry(forgetful, keep_days=7), Secret(b"another site's secret"))
        (finding,) = await run(stranger, "<>", bounce(marked))
        assert finding.startswith("backscatter.unsolicited")
    finally:
        forgetful.close()


async def test_a_bounce_to_several_recipients_is_never_genuine(store: SqliteStore) -> None:
    check = BackscatterCheck(SentRegistry(store, keep_days=7), SECRET)
    (finding,) = await run(check, "<>", bounce(), recipients=2)
    assert finding.startswith("backscatter.multiple_recipients") and finding.endswith("recipients=2")


async def test_ordinary_and_trusted_mail_is_not_judged(store: SqliteStore) -> None:
    check = BackscatterCheck(SentRegistry(store, keep_days=7), SECRET)
    assert await run(check, "<friend@remote.example>", b"Subject: hi\r\n\r\nplain mail\r\n") == []
    assert await run(check, "<>", bounce(), trusted=True) == []
    # An auto-reply from a real sender is automated: it needs evidence too.
    auto = b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\nIn-Reply-To: <x@example.org>\r\n\r\nAway.\r\n"
    (finding,) = await run(check, "<friend@remote.example>", auto)
    assert finding.startswith("backscatter.unsolicited kind=auto")
