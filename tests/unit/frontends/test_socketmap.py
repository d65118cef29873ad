"""Netstring framing and the SRS socketmap answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from scattergate.frontends.socketmap import NetstringDecoder, NetstringError, answer, netstring
from scattergate.rewrite.keys import SrsSecrets

SECRETS = SrsSecrets.of(["test-secret"])


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
    reply = NetstringDecoder().feed(answer(b"forward user@example.net", "fwd.example.org", SECRETS))[0]
    assert reply.startswith(b"OK SRS0=") and reply.endswith(b"@fwd.example.org")
    back = NetstringDecoder().feed(answer(b"reverse " + reply[3:], "fwd.example.org", SECRETS))[0]
    assert back == b"OK user@example.net"
    assert NetstringDecoder().feed(answer(b"nosuchmap x", "fwd.example.org", SECRETS))[0].startswith(b"PERM")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes(data: bytes) -> None:
    try:
        NetstringDecoder().feed(data)
    except NetstringError:
        pass
