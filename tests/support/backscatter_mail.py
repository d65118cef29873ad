"""A bounce for mail we never sent: the backscatter the gateway stops (metrics and dashboard tests)."""

from __future__ import annotations

import smtplib
from datetime import datetime, timezone

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn


def unsolicited_bounce() -> bytes:
    """A well-formed DSN to user@example.org about a Message-ID the gateway never sent."""
    original = b"From: user@example.org\r\nTo: x@remote.example\r\nMessage-ID: <never@example.org>\r\n\r\nx\r\n"
    failed = FailedMessage(
        sender="user@example.org", original=original,
        recipients=[RecipientStatus("x@remote.example", "5.1.1", diagnostic="550 5.1.1 no such user")],
        reporting_mta="mx.remote.example", arrival=datetime.now(timezone.utc),
    )
    return build_dsn(failed, now=datetime.now(timezone.utc)).data


OUTSIDE = ("127.0.0.2", 0)  # not a trusted network: a stranger's mail server


def send_unsolicited_bounce(gateway: tuple[str, int]) -> tuple[int, bytes]:
    """Send it from a stranger's server; the reply that decided it (at RCPT or end of DATA)."""
    with smtplib.SMTP(*gateway, source_address=OUTSIDE) as client:
        client.ehlo("mx.remote.example")
        client.mail("")
        code, reply = client.rcpt("user@example.org")
        if code == 250:
            code, reply = client.data(unsolicited_bounce())
    return code, reply
