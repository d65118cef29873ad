"""Not an open relay under any combination of the settings that touch relaying.

Every delivery mode × trusted networks (none, someone else's, loopback-but-not-us) × BATV ×
backscatter mode, against every classic relay trick, from an untrusted client (127.0.0.2).
"""

from __future__ import annotations

import itertools
import smtplib

import pytest

from tests.support.sink import free_port

TRICKS = [
    "victim@other.example",
    "victim%other.example@example.org",
    "other.example!victim@example.org",
    '"victim@other.example"@example.org',
    "@example.org:victim@other.example",
    "victim@[192.0.2.1]",
    "victim@other.example.",
]
SENDERS = ["someone@remote.example", "", "postmaster@example.org", "x@mx.test.example"]
MODES = ["maildir", "relay", "spool"]
TRUSTED = [[], ["192.0.2.0/24"], ["127.0.0.1/32"]]  # we connect from 127.0.0.2: never trusted
BACKSCATTER = [("enforce", "reject"), ("off", "off")]


@pytest.mark.parametrize("mode, trusted, batv", list(itertools.product(MODES, TRUSTED, BACKSCATTER)))
def test_no_trick_relays(gateway, make_config, mode: str, trusted: list[str], batv: tuple[str, str]) -> None:  # type: ignore[no-untyped-def]
    delivery: dict[str, object] = {}
    spool: dict[str, object] = {}
    if mode != "maildir":
        delivery = {"relay": f"127.0.0.1:{free_port()}", "verify_recipients": False}
    if mode == "spool":
        spool = {"enabled": True}
    gw = gateway(make_config(
        receive={"domains": ["example.org"], "trusted_networks": trusted},
        delivery=delivery, spool=spool,
        backscatter={"batv_mode": batv[0], "mode": batv[1]},
    ))
    with smtplib.SMTP(*gw.address, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("mx.test.example")  # even claiming to be us
        for sender in SENDERS:
            client.mail(sender)
            for trick in TRICKS:
                code, text = client.docmd(f"RCPT TO:<{trick}>")
                assert code >= 500, (sender, trick, code, text)
            client.rset()
