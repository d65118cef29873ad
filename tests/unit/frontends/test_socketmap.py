"""Netstring framing and the socketmap answers (BATV and SRS maps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from scattergate.frontends.socketmap import Maps, NetstringDecoder, NetstringError, answer, netstring, today
from scattergate.rewrite import batv
from scattergate.rewrite.keys import BatvKeyring, SrsSecrets

SECRETS = SrsSecrets.of(["test-secret"])
KEYS = BatvKeyring.from_mapping({"0": "site-secret"}, current="0")
MAPS = Maps(KEYS, "fwd.example.org", SECRETS)


def _reply(request: bytes, maps: Maps = MAPS) -> bytes:
    return NetstringDecoder().feed(answer(request, maps))[0]


def test_netstrings_split_anywhere() -> None:
    wire = netstring(b"forward a@example.net") + netstring(b"") + netstring(b"reverse x")
    for step in (1, 4, 100):
        decoder = NetstringDecoder()
        out: list[bytes] = []
        for i in range(0, len(wire), step):
            out += decoder.feed(wire[i:i + step])
        assert out == [b"forward a@example.net", b"", b"reverse x"]


@pytest.mark.parametrize("wire", [b"x:abc,", b"3:abcd", b"99999999:", b"5:abc", b"abc"])
def test_bad_netstrings(wire: bytes) -> None:
    decoder = NetstringDecoder()
    try:
        decoder.feed(wire)
    except NetstringError:
        return
    # Incomplete but plausible input waits for more; it must not produce a request.
    assert wire in (b"5:abc",)


def test_forward_then_reverse() -> None:
    reply = _reply(b"forward user@example.net")
    assert reply.startswith(b"OK SRS0=") and reply.endswith(b"@fwd.example.org")
    assert _reply(b"reverse " + reply[3:]) == b"OK user@example.net"
    assert _reply(b"nosuchmap x").startswith(b"PERM")


def test_batv_map_strips_only_a_valid_tag_of_ours() -> None:
    tagged = batv.sign("alice@example.org", KEYS, today())
    assert _reply(f"batv {tagged}".encode()) == b"OK alice@example.org"
    forged = batv.sign("alice@example.org", BatvKeyring.from_mapping({"0": "other"}, current="0"), today())
    assert _reply(f"batv {forged}".encode()) == b"NOTFOUND "
    expired = batv.sign("alice@example.org", KEYS, today() - 30)
    assert _reply(f"batv {expired}".encode()) == b"NOTFOUND "
    # Postfix also looks up the bare address, the local part and "@domain": none is ours to map.
    for key in (b"alice@example.org", b"alice", b"@example.org"):
        assert _reply(b"batv " + key) == b"NOTFOUND "


def test_maps_not_configured_are_refused() -> None:
    assert _reply(b"forward user@example.net", Maps(KEYS)).startswith(b"PERM")
    assert _reply(b"batv prvs=0000000000=a@example.org", Maps(None, "fwd.example.org", SECRETS)).startswith(b"PERM")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes(data: bytes) -> None:
    try:
        NetstringDecoder().feed(data)
    except NetstringError:
        pass
