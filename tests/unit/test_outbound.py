"""Outbound marking (outbound.py): the one place our users' mail gets its BATV tag, its
registered Message-ID and its token — whichever route (SMTP or milter) carries it out."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from scattergate.address import parse_path
from scattergate.outbound import BatvSettings, OutboundMarker, SentRegistry, outbound_message_id
from scattergate.rewrite import batv, token
from scattergate.rewrite.keys import BatvKeyring, Secret
from scattergate.state.sqlite import SqliteStore

SECRET = Secret(b"site secret for the tests")
KEYRING = BatvKeyring.from_mapping({"0": SECRET}, current="0")
NOW = 1_750_000_000.0
MESSAGE = b"Message-ID: <m1@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.db")
    yield store
    store.close()


@pytest.fixture
def marker(store: SqliteStore) -> OutboundMarker:
    settings = BatvSettings(KEYRING, frozenset({"example.org"}), "enforce", {"plain.example.org": "off"})
    return OutboundMarker(settings, SentRegistry(store, keep_days=7, clock=lambda: NOW), SECRET, clock=lambda: NOW)


def test_sign_tags_our_domains_only(marker: OutboundMarker) -> None:
    signed = marker.sign(parse_path("<alice@example.org>"))
    assert str(signed).startswith("prvs=")
    assert batv.verify(str(signed), KEYRING, batv.days_since_epoch(NOW)).valid
    for untouched in ("<bob@elsewhere.example>", "<carol@plain.example.org>", "<>"):
        sender = parse_path(untouched, allow_null=True)
        assert marker.sign(sender) == sender
    assert marker.sign(signed) == signed  # never tagged twice


async def test_mark_registers_the_message_id_and_adds_the_token(marker: OutboundMarker) -> None:
    sender, message = await marker.mark(parse_path("<alice@example.org>"), MESSAGE)
    assert str(sender).startswith("prvs=")
    assert message == f"{token.HEADER}: {token.make(SECRET, '<m1@example.org>')}\r\n".encode() + MESSAGE
    assert await marker.registry.sent("<M1@example.org>")  # Message-IDs compare case-blind
    assert not await marker.registry.sent("<other@example.org>")


async def test_a_message_without_message_id_is_signed_but_not_registered(marker: OutboundMarker) -> None:
    bare = b"Subject: hi\r\n\r\nMessage-ID: <in-the-body@example.org>\r\n"
    sender, message = await marker.mark(parse_path("<alice@example.org>"), bare)
    assert message == bare and str(sender).startswith("prvs=")
    assert await marker.remember(parse_path("<alice@example.org>"), bare) is None
    assert not await marker.registry.sent("<in-the-body@example.org>")


async def test_the_registry_forgets_after_its_keep_days(store: SqliteStore) -> None:
    now = [NOW]
    registry = SentRegistry(store, keep_days=1, clock=lambda: now[0])
    await registry.remember("<m1@example.org>", "alice@example.org")
    now[0] += 2 * 86400
    assert not await registry.sent("<m1@example.org>")


def test_outbound_message_id_reads_the_header_block_only() -> None:
    assert outbound_message_id(MESSAGE) == "<m1@example.org>"
    assert outbound_message_id(b"message-ID:   <x@y>  \r\n\r\n") == "<x@y>"
    assert outbound_message_id(b"Subject: s\r\n\r\nMessage-ID: <x@y>\r\n") is None
    assert outbound_message_id(b"Message-ID:\r\n\r\n") is None
