"""The policy delegation wire format."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from scattergate.frontends import policy_codec as pc
from scattergate.model import Reply

REQUEST = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.7",
           "sender": "a@example.net", "recipient": "b@example.org", "helo_name": "client.example.net"}


def test_requests_split_anywhere_decode_in_order() -> None:
    second = dict(REQUEST, recipient="c@example.org")
    wire = pc.encode_request(REQUEST) + pc.encode_request(second)
    for step in (1, 5, 1000):
        decoder = pc.Decoder()
        out: list[dict[str, str]] = []
        for i in range(0, len(wire), step):
            out += decoder.feed(wire[i:i + step])
        assert out == [REQUEST, second]


def test_value_may_hold_equals_signs_and_be_empty() -> None:
    assert pc.Decoder().feed(b"sender=\nccert_subject=CN=x=y\n\n") == [{"sender": "", "ccert_subject": "CN=x=y"}]


@pytest.mark.parametrize("wire", [b"no equals sign\n\n", b"=value\n\n", b"x" * (pc.MAX_LINE + 2),
                                  b"".join(b"a%d=1\n" % i for i in range(pc.MAX_ATTRIBUTES + 1))])
def test_malformed_or_endless_input_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(pc.PolicyProtocolError):
        pc.Decoder().feed(wire)


def test_actions() -> None:
    assert pc.encode(pc.Dunno()) == b"action=DUNNO\n\n"
    assert pc.encode(pc.RejectAction(Reply(550, "5.1.1", "User unknown"))) == b"action=550 5.1.1 User unknown\n\n"
    assert pc.encode(pc.DeferIfPermit(Reply(451, "4.4.3", "Try later"))) == b"action=DEFER_IF_PERMIT 4.4.3 Try later\n\n"
    with pytest.raises(ValueError):
        pc.RejectAction(Reply(450, "4.1.1", "not permanent"))
    with pytest.raises(ValueError):
        pc.DeferIfPermit(Reply(550, "5.1.1", "not temporary"))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_decoder_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    try:
        pc.Decoder().feed(data)
    except pc.PolicyProtocolError:
        pass
