"""Backscatter aimed at our users, through the real gateway: genuine bounces for mail we sent
get through; bounces and auto-replies for mail we never sent are refused.

Our users connect from 127.0.0.1 (trusted); the outside world from 127.0.0.2.
"""

from __future__ import annotations

import re
import smtplib
from datetime import datetime, timezone

import pytest

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn

OUTSIDE = ("127.0.0.2", 0)
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\nTo: friend@remote.example\r\nSubject: lunch?\r\n"
    b"Message-ID: <lunch-1@example.org>\r\n\r\nAre you free?\r\n"
)


@pytest.fixture
def site(gateway, make_config, smtp_sink):  # type: ignore[no-untyped-def]
    sink = smtp_sink()

    def start(**backscatter):  # type: ignore[no-untyped-def]
        config = make_config(
            receive={"domains": ["example.org"], "trusted_networks": ["127.0.0.1/32"]},
            delivery={"relay": sink.address, "verify_recipients": False},
            backscatter=backscatter,
        )
        return gateway(config), sink

    return start


def send_outbound(gw, sink) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    """Alice sends through the gateway; return the envelope sender and the message as relayed."""
    with smtplib.SMTP(*gw.address) as client:
        client.sendmail("alice@example.org", ["friend@remote.example"], ORIGINAL)
    (dump,) = [d for d in sink.messages() if b"X-Mail-Args: <>" not in d]
    sender = re.search(rb"^X-Mail-Args: <([^>]*)>", dump, re.M).group(1).decode()  # type: ignore[union-attr]
    relayed = dump.split(b"\n", 5)[-1].replace(b"\n", b"\r\n")
    return sender, relayed


def bounce_for(original: bytes, to: str) -> bytes:
    failed = FailedMessage(
        sender=to, original=original,
        recipients=[RecipientStatus("friend@remote.example", "5.1.1", diagnostic="550 5.1.1 no such user")],
        reporting_mta="mx.remote.example", arrival=datetime.now(timezone.utc),
    )
    return build_dsn(failed, now=datetime.now(timezone.utc)).data


def deliver_from_outside(gw, sender: str, rcpts: list[str], data: bytes) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
        client.ehlo("mx.remote.example")
        client.mail(sender)
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = client.data(data)
        return code, text.decode()


def test_outbound_mail_is_signed_and_carries_the_token(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site()
    sender, relayed = send_outbound(gw, sink)
    assert re.fullmatch(r"prvs=0\d{3}[0-9a-f]{6}=alice@example.org", sender)
    assert re.search(rb"^X-Scattergate-Token: [0-9a-f]{16}\r$", relayed, re.M)


def test_a_genuine_bounce_reaches_the_user(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site()
    sender, relayed = send_outbound(gw, sink)
    code, text = deliver_from_outside(gw, "", [sender], bounce_for(relayed, sender))
    assert code == 250, text
    (dump,) = [d for d in sink.messages() if b"X-Mail-Args: <>" in d]
    assert b"X-Rcpt-Args: <alice@example.org>" in dump  # the tag is stripped before delivery


def test_the_same_bounce_without_the_tag_is_refused_at_rcpt(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site()
    sender, relayed = send_outbound(gw, sink)
    code, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(relayed, "alice@example.org"))
    assert code == 550 and text.startswith("5.7.1") and "BATV" in text


def test_a_forged_tag_is_refused_at_rcpt(site) -> None:  # type: ignore[no-untyped-def]
    gw, _ = site()
    code, text = deliver_from_outside(gw, "", ["prvs=0123abcdef=alice@example.org"], b"Subject: x\r\n\r\nx\r\n")
    assert code == 550 and "invalid BATV tag" in text


def test_without_batv_a_bounce_for_our_message_id_gets_through(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site(batv_mode="off")
    _, relayed = send_outbound(gw, sink)
    code, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(relayed, "alice@example.org"))
    assert code == 250, text


def test_without_batv_a_bounce_for_a_message_we_never_sent_is_refused(site) -> None:  # type: ignore[no-untyped-def]
    gw, _ = site(batv_mode="off")
    forged = ORIGINAL.replace(b"lunch-1@example.org", b"never-sent@example.org")
    code, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(forged, "alice@example.org"))
    assert code == 550 and "backscatter" in text


def test_the_token_alone_proves_a_bounce_is_ours(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site(batv_mode="off")
    _, relayed = send_outbound(gw, sink)
    gw.store._db.execute("DELETE FROM sent")  # forget the registry: only the quoted token is left
    code, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(relayed, "alice@example.org"))
    assert code == 250, text
    tampered = re.sub(rb"(X-Scattergate-Token: )[0-9a-f]{16}", rb"\g<1>0123456789abcdef", relayed)
    code, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(tampered, "alice@example.org"))
    assert code == 550


def test_an_auto_reply_to_mail_we_never_sent_is_refused(site) -> None:  # type: ignore[no-untyped-def]
    gw, _ = site()
    vacation = (
        b"From: Bob <bob@remote.example>\r\nTo: alice@example.org\r\nSubject: Out of Office: your message\r\n"
        b"Auto-Submitted: auto-replied\r\nIn-Reply-To: <never-sent@example.org>\r\n\r\nI am away until Monday.\r\n"
    )
    code, text = deliver_from_outside(gw, "bob@remote.example", ["alice@example.org"], vacation)
    assert code == 550 and "backscatter" in text


def test_a_bounce_to_several_recipients_is_refused(site) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site(batv_mode="off")
    _, relayed = send_outbound(gw, sink)
    code, text = deliver_from_outside(
        gw, "", ["alice@example.org", "bob@example.org"], bounce_for(relayed, "alice@example.org")
    )
    assert code == 550 and "exactly one recipient" in text


def test_ordinary_mail_from_outside_is_untouched(site) -> None:  # type: ignore[no-untyped-def]
    gw, _ = site()
    code, text = deliver_from_outside(gw, "friend@remote.example", ["alice@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    assert code == 250, text


@pytest.mark.parametrize("mode, code", [("quarantine", 250), ("tag", 250)])
def test_backscatter_modes(site, mode: str, code: int) -> None:  # type: ignore[no-untyped-def]
    gw, sink = site(batv_mode="off", mode=mode)
    forged = ORIGINAL.replace(b"lunch-1@example.org", b"never-sent@example.org")
    got, text = deliver_from_outside(gw, "", ["alice@example.org"], bounce_for(forged, "alice@example.org"))
    assert got == code, text
    if mode == "quarantine":
        (item,) = gw.store.quarantine_list()
        assert "backscatter.unsolicited" in item.reason
    else:
        (dump,) = [d for d in sink.messages() if b"X-Mail-Args: <>" in d]
        assert b"X-Scattergate-Backscatter: unsolicited" in dump
