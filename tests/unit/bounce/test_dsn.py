"""RFC 3464 DSN builder: read back with Python's email parser, every required field present."""

from __future__ import annotations

import email
from datetime import datetime, timezone
from email import policy
from email.message import Message

import pytest

from scattergate.bounce.dsn import (
    FailedMessage,
    NullSenderError,
    RecipientStatus,
    build_dsn,
    xtext_decode,
)

UTC = timezone.utc
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ARRIVAL = datetime(2024, 3, 1, 11, 59, 30, tzinfo=UTC)
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)


def _failed(**kw: object) -> FailedMessage:
    base: dict[str, object] = dict(
        sender="<alice@example.org>",
        original=ORIGINAL,
        recipients=[
            RecipientStatus(
                "bob@example.net",
                "5.1.1",
                diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected",
                remote_mta="mx.example.net",
                orcpt="rfc822;bob+2Blist@example.net",
            )
        ],
        reporting_mta="gw.example.com",
        arrival=ARRIVAL,
    )
    base.update(kw)
    return FailedMessage(**base)  # type: ignore[arg-type]


def _parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=policy.default)


def _parts(msg: Message) -> dict[str, Message]:
    return {p.get_content_type(): p for p in msg.iter_parts()}  # type: ignore[attr-defined]


def test_envelope_is_null_sender_to_original_sender() -> None:
    dsn = build_dsn(_failed(), now=NOW, message_id="<dsn1@gw.example.com>")
    assert dsn.mail_from == ""
    assert dsn.rcpt_to == "alice@example.org"
    assert dsn.message_id == "<dsn1@gw.example.com>"


def test_crlf_line_ends_only() -> None:
    data = build_dsn(_failed(), now=NOW).data
    assert data.count(b"\n") == data.count(b"\r\n")
    assert b"\r\r" not in data


def test_top_level_headers() -> None:
    msg = _parse(build_dsn(_failed(), now=NOW, message_id="<dsn1@gw.example.com>").data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@gw.example.com"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Subject"]
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == "<dsn1@gw.example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@example.org>"
    assert msg["MIME-Version"] == "1.0"


def test_three_parts_in_rfc3464_order() -> None:
    msg = _parse(build_dsn(_failed(), now=NOW).data)
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = _parts(msg)["text/plain"].get_content()
    assert "bob@example.net" in human and "5.1.1" in human


def test_delivery_status_fields() -> None:
    msg = _parse(build_dsn(_failed(envid="QQ314159+2B1"), now=NOW).data)
    blocks = _parts(msg)["message/delivery-status"].get_payload()
    per_message, rcpt = blocks[0], blocks[1]
    assert per_message["Reporting-MTA"] == "dns; gw.example.com"
    assert per_message["Original-Envelope-Id"] == "QQ314159+1"
    assert per_message["Arrival-Date"] == "Fri, 01 Mar 2024 11:59:30 +0000"
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert rcpt["Original-Recipient"] == "rfc822;bob+list@example.net"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected"


def test_optional_fields_absent_when_not_given() -> None:
    rcpt = RecipientStatus("bob@example.net", "5.7.1")
    msg = _parse(build_dsn(_failed(recipients=[rcpt]), now=NOW).data)
    per_message, block = _parts(msg)["message/delivery-status"].get_payload()
    assert "Original-Envelope-Id" not in per_message
    for name in ("Original-Recipient", "Remote-MTA", "Diagnostic-Code"):
        assert name not in block


def test_several_recipients_and_delayed_action() -> None:
    rcpts = [
        RecipientStatus("a@example.net", "5.1.1", diagnostic="550 no such user"),
        RecipientStatus(
            "b@example.net", "4.4.1", action="delayed", last_attempt=NOW, will_retry_until=datetime(2024, 3, 6, tzinfo=UTC)
        ),
    ]
    msg = _parse(build_dsn(_failed(recipients=rcpts), now=NOW).data)
    blocks = _parts(msg)["message/delivery-status"].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; a@example.net", "rfc822; b@example.net"]
    assert blocks[2]["Action"] == "delayed" and blocks[2]["Will-Retry-Until"]
    assert blocks[2]["Last-Attempt-Date"]


def test_ret_hdrs_returns_headers_only() -> None:
    msg = _parse(build_dsn(_failed(ret="HDRS"), now=NOW).data)
    headers = _parts(msg)["text/rfc822-headers"]
    text = headers.get_payload()
    assert "Subject: lunch" in text and "Message-ID: <m1@example.org>" in text
    assert "See you at noon" not in text


def test_ret_full_returns_whole_message() -> None:
    msg = _parse(build_dsn(_failed(ret="FULL"), now=NOW).data)
    returned = _parts(msg)["message/rfc822"].get_payload()[0]
    assert returned["Subject"] == "lunch"
    assert "See you at noon." in returned.get_content()


def test_ret_full_over_cap_falls_back_to_headers() -> None:
    big = ORIGINAL + b"x" * 5000 + b"\r\n"
    msg = _parse(build_dsn(_failed(ret="FULL", original=big), now=NOW, max_return=1000).data)
    parts = _parts(msg)
    assert "message/rfc822" not in parts
    assert "Subject: lunch" in parts["text/rfc822-headers"].get_payload()
    assert "only its headers" in parts["text/plain"].get_content()


def test_huge_header_section_is_capped() -> None:
    original = b"".join(b"Received: from h%d.example\r\n" % i for i in range(500)) + b"\r\nbody\r\n"
    dsn = build_dsn(_failed(original=original), now=NOW, max_return=2000)
    headers = _parts(_parse(dsn.data))["text/rfc822-headers"].get_payload()
    assert 0 < len(headers) <= 2100
    assert len(dsn.data) < 6000


def test_eight_bit_original_headers_survive() -> None:
    original = b"Subject: caf\xc3\xa9\r\nFrom: a@example.org\r\n\r\nx\r\n"
    dsn = build_dsn(_failed(original=original), now=NOW)
    assert b"Subject: caf\xc3\xa9\r\n" in dsn.data


def test_bare_lf_original_is_normalised() -> None:
    dsn = build_dsn(_failed(original=ORIGINAL.replace(b"\r\n", b"\n"), ret="FULL"), now=NOW)
    assert dsn.data.count(b"\n") == dsn.data.count(b"\r\n")


def test_multiline_diagnostic_cannot_inject_headers() -> None:
    rcpt = RecipientStatus("bob@example.net", "5.1.1", diagnostic="550-5.1.1 first\r\nBcc: victim@example.com\r\n550 5.1.1 last")
    msg = _parse(build_dsn(_failed(recipients=[rcpt]), now=NOW).data)
    block = _parts(msg)["message/delivery-status"].get_payload()[1]
    assert "Bcc" not in block
    assert "Bcc" not in msg
    assert block["Diagnostic-Code"].startswith("smtp; 550-5.1.1 first Bcc: victim")


@pytest.mark.parametrize("sender", ["", "<>", "  <>  "])
def test_never_built_for_null_sender(sender: str) -> None:
    with pytest.raises(NullSenderError):
        build_dsn(_failed(sender=sender), now=NOW)


@pytest.mark.parametrize(
    "rcpt",
    [
        RecipientStatus("bob@example.net", "4.1.1"),  # failed needs 5.x.x
        RecipientStatus("bob@example.net", "5.1.1", action="delayed"),
        RecipientStatus("bob@example.net", "550"),
        RecipientStatus("bob@example.net\r\nBcc: x@y", "5.1.1"),
    ],
)
def test_inconsistent_recipient_rejected(rcpt: RecipientStatus) -> None:
    with pytest.raises(ValueError):
        build_dsn(_failed(recipients=[rcpt]), now=NOW)


def test_sender_with_control_characters_rejected() -> None:
    with pytest.raises(ValueError):
        build_dsn(_failed(sender="alice@example.org\r\nBcc: x@y"), now=NOW)


def test_naive_datetimes_rejected() -> None:
    with pytest.raises(ValueError):
        build_dsn(_failed(), now=datetime(2024, 1, 1))


def test_utf8_sender() -> None:
    dsn = build_dsn(_failed(sender="jörg@exämple.org"), now=NOW)
    assert dsn.rcpt_to == "jörg@exämple.org"
    assert "jörg@exämple.org".encode() in dsn.data


def test_xtext_decode() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_decode("plain") == "plain"
