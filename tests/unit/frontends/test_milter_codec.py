"""The milter wire format: round trips, framing across arbitrary splits, typed refusals, fuzz."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from scattergate.frontends import milter_codec as mc
from scattergate.model import Reply

COMMANDS: list[mc.Command] = [
    mc.OptNeg(6, 0x1FF, 0x1FFFFF),
    mc.Macros("C", {"j": "mx.example", "{daemon_name}": "smtpd"}),
    mc.Connect("client.example.net", "4", 40000, "192.0.2.7"),
    mc.Connect("[::1]", "6", 25, "::1"),
    mc.Connect("unknown", "U", 0, ""),
    mc.Helo("client.example.net"),
    mc.Mail("<a@example.net>", ("BODY=8BITMIME", "SIZE=100")),
    mc.Rcpt("<b@example.org>", ("NOTIFY=SUCCESS,FAILURE",)),
    mc.Data(),
    mc.Header("Subject", " hello\n\tworld"),
    mc.EndOfHeaders(),
    mc.Body(b"line\r\n" * 10),
    mc.EndOfMessage(),
    mc.Abort(),
    mc.Quit(),
    mc.Quit(new_connection=True),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_command_round_trip(command: mc.Command) -> None:
    assert mc.Decoder().feed(mc.encode_command(command)) == [command]


def test_decoder_reassembles_packets_split_anywhere() -> None:
    wire = b"".join(mc.encode_command(c) for c in COMMANDS)
    for step in (1, 3, 7, 64):
        decoder = mc.Decoder()
        out: list[mc.Command] = []
        for i in range(0, len(wire), step):
            out += decoder.feed(wire[i:i + step])
        assert out == COMMANDS


@pytest.mark.parametrize("length", [0, mc.MAX_PACKET + 1])
def test_absurd_packet_length_is_a_protocol_error(length: int) -> None:
    with pytest.raises(mc.MilterProtocolError):
        mc.Decoder().feed(struct.pack("!I", length) + b"B")


def test_unknown_command_is_a_protocol_error() -> None:
    with pytest.raises(mc.MilterProtocolError):
        mc.Decoder().feed(struct.pack("!I", 1) + b"Z")


def test_optneg_reply_carries_flags_and_macro_lists() -> None:
    data = mc.encode(mc.OptNegReply(mc.ACT_ADDHDRS, mc.P_NOUNKNOWN, {mc.STAGE_MAIL: "{auth_authen}"}))
    code, payload = mc.decode_response(data)
    assert code == "O"
    assert struct.unpack("!III", payload[:12]) == (6, mc.ACT_ADDHDRS, mc.P_NOUNKNOWN)
    assert payload[12:] == struct.pack("!I", mc.STAGE_MAIL) + b"{auth_authen}\0"


def test_refusals_are_typed_by_reply_class() -> None:
    assert isinstance(mc.refusal(Reply(550, "5.1.1", "no")), mc.RejectReply)
    assert isinstance(mc.refusal(Reply(451, "4.3.0", "later")), mc.TempfailReply)
    with pytest.raises(ValueError):
        mc.RejectReply(Reply(451, "4.3.0", "a reject cannot carry a 4xx"))
    with pytest.raises(ValueError):
        mc.TempfailReply(Reply(550, "5.1.1", "a tempfail cannot carry a 5xx"))


def test_reply_code_packet_escapes_percent() -> None:
    code, payload = mc.decode_response(mc.encode(mc.RejectReply(Reply(554, "5.7.1", "100% spam"))))
    assert (code, payload) == ("y", b"554 5.7.1 100%% spam\0")


def test_recipient_edits_encode_as_postfix_expects() -> None:
    assert mc.decode_response(mc.encode(mc.DeleteRecipient("<a@example.org>"))) == ("-", b"<a@example.org>\0")
    assert mc.decode_response(mc.encode(mc.AddRecipient("<a@example.org>", ("NOTIFY=NEVER",)))) == (
        "2", b"<a@example.org>\0NOTIFY=NEVER\0")
    assert mc.decode_response(mc.encode(mc.AddRecipient("<a@example.org>"))) == ("+", b"<a@example.org>\0")


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        mc.encode(mc.AddHeader("X-A", "one\r\nX-Injected: two"))
    with pytest.raises(ValueError):
        mc.encode(mc.AddHeader("X-A: b", "c"))
    for name in ("", "X A", "X\rA", "X\nA", "X\0A", "X:A"):
        with pytest.raises(ValueError):
            mc.encode(mc.InsertHeader(0, name, "c"))
    assert mc.encode(mc.InsertHeader(0, "X-A", " c")).endswith(b"X-A\0 c\0")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    try:
        mc.Decoder().feed(data)
    except mc.MilterProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from("OCDHMRTLNBEAQKU"), st.binary(max_size=100))
def test_any_payload_of_a_known_command_decodes_or_is_refused(code: str, payload: bytes) -> None:
    packet = struct.pack("!I", len(payload) + 1) + code.encode() + payload
    try:
        mc.Decoder().feed(packet)
    except mc.MilterProtocolError:
        pass


def test_an_empty_macro_list_decodes_like_any_other() -> None:
    # Postfix sends one before nearly every step: decoded on a shorter path, to the same command.
    for stage in "CHMRTLBE":
        packet = mc.encode_command(mc.Macros(stage, {}))
        assert packet == b"\x00\x00\x00\x02D" + stage.encode()
        assert mc.Decoder().feed(packet) == [mc.Macros(stage, {})]
    assert mc.Decoder().feed(mc.encode_command(mc.Macros("C", {"j": "host"}))) == [mc.Macros("C", {"j": "host"})]
