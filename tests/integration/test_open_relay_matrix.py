"""Not an open relay under any combination of the settings that touch relaying.

Every delivery mode × trusted networks (none, someone else's, loopback-but-not-us) × BATV ×
backscatter mode × SMTP AUTH offered or not, against every classic relay trick, from an
untrusted client (127.0.0.2). Where AUTH is offered, the client uses STARTTLS and fails AUTH.
"""

from __future__ import annotations

import itertools
import smtplib
import ssl
from pathlib import Path

import pytest

from scattergate.credentials import hash_password
from tests.conftest import require_binary
from tests.support.sink import free_port
from tests.support.tls import Pki, make_pki

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
AUTH = [False, True]


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path]:
    directory = tmp_path_factory.mktemp("auth")
    users = directory / "users"
    users.write_text(f"alice@example.org:{hash_password('right')}\n")
    users.chmod(0o600)
    return make_pki(require_binary("openssl"), directory / "pki"), users


@pytest.mark.parametrize("mode, trusted, batv, auth", list(itertools.product(MODES, TRUSTED, BACKSCATTER, AUTH)))
def test_no_trick_relays(gateway, make_config, request, mode: str, trusted: list[str], batv: tuple[str, str], auth: bool) -> None:  # type: ignore[no-untyped-def]
    tls: dict[str, object] = {}
    smtp_auth: dict[str, object] = {}
    if auth:
        pki, users = request.getfixturevalue("auth_files")
        tls = {"cert_file": str(pki.cert), "key_file": str(pki.key)}
        smtp_auth = {"users_file": str(users)}
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
        tls=tls, smtp_auth=smtp_auth,
    ))
    with smtplib.SMTP(*gw.address, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("mx.test.example")  # even claiming to be us
        if auth:
            client.starttls(context=ssl._create_unverified_context())
            client.ehlo("mx.test.example")
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("alice@example.org", "wrong")
        for sender in SENDERS:
            client.mail(sender)
            for trick in TRICKS:
                code, text = client.docmd(f"RCPT TO:<{trick}>")
                assert code >= 500, (sender, trick, code, text)
            client.rset()
