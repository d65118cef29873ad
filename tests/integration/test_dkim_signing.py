"""The gateway DKIM-signs the DSNs it sends (and, when asked, its users' outbound mail):
a real gateway in spool mode, a refusing downstream, the DSN caught at a smarthost and
verified with dkimpy against the key the loopback DNS server publishes."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from tests.support.dkim_keys import dns_txt, key_record, make_key
from tests.support.dns_server import DnsTestServer
from tests.support.polling import wait_for

MESSAGE = b"From: someone@pass.example\r\nTo: user@example.org\r\nSubject: spooled\r\n\r\nHello.\r\n"


def as_sent(dump: bytes) -> bytes:
    """The message as smtp-sink received it (after the Received field it adds, which DKIM
    does not sign): its X- lines dropped, CRLF line ends back."""
    lines = dump.split(b"\n")
    while lines and lines[0].startswith(b"X-"):
        lines.pop(0)
    return b"\r\n".join(lines)


def test_a_dsn_we_send_is_signed_and_verifies(gateway, make_config, smtp_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, public = make_key(tmp_path / "keys", "mail")
    (tmp_path / "KeyTable").write_text(f"mail test.example:sel1:{key}\n")
    refusing = smtp_sink("-f", "rcpt")
    smarthost = smtp_sink()
    zone = {"pass.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
            "sel1._domainkey.test.example.": [("TXT", key_record(public))]}
    with DnsTestServer(zone) as dns:
        config = make_config(
            receive={"domains": ["example.org"]},
            delivery={"relay": refusing.address, "verify_recipients": False, "relay_timeout": 5.0},
            spool={"enabled": True, "retry_initial": 0.2, "retry_max": 0.5, "dsn_route": smarthost.address},
            auth={"spf": True},
            dns={"nameservers": ["127.0.0.1"], "port": dns.port},
            dkim_signing={"key_table": str(tmp_path / "KeyTable")},
        )
        gw = gateway(config)
        with smtplib.SMTP(*gw.address) as client:
            client.sendmail("someone@pass.example", ["user@example.org"], MESSAGE, rcpt_options=["NOTIFY=FAILURE"])
        assert wait_for(lambda: len(smarthost.messages()) == 1)
        (dump,) = smarthost.messages()
        assert b"X-Mail-Args: <>" in dump  # the DSN, from the null sender
        sent = as_sent(dump)
        assert re.search(rb"^DKIM-Signature:.*d=test\.example", sent, re.M | re.S)
        assert b"From: Mail Delivery System <MAILER-DAEMON@mx.test.example>" in sent
        assert dkim.verify(sent, dnsfunc=dns_txt(dns.port))


def test_outbound_mail_is_signed_when_asked(gateway, make_config, smtp_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key, public = make_key(tmp_path / "keys", "mail")
    (tmp_path / "KeyTable").write_text(f"mail example.org:out:{key}\n")
    sink = smtp_sink()
    config = make_config(
        receive={"domains": ["example.org"], "trusted_networks": ["127.0.0.1/32"]},
        delivery={"relay": sink.address, "verify_recipients": False},
        backscatter={"mode": "off", "batv_mode": "off"},
        dkim_signing={"key_table": str(tmp_path / "KeyTable"), "outbound": True},
    )
    gw = gateway(config)
    message = b"From: Alice <alice@example.org>\r\nTo: friend@remote.example\r\nSubject: lunch?\r\n\r\nFree?\r\n"
    with smtplib.SMTP(*gw.address) as client:
        client.sendmail("alice@example.org", ["friend@remote.example"], message)
    (dump,) = sink.messages()
    sent = as_sent(dump)
    assert re.search(rb"DKIM-Signature:.*d=example\.org", sent, re.S)
    with DnsTestServer({"out._domainkey.example.org.": [("TXT", key_record(public))]}) as dns:
        assert dkim.verify(sent, dnsfunc=dns_txt(dns.port))


@pytest.mark.parametrize("command", [["serve", "--workers", "2"], ["check-config"]])
def test_a_key_others_can_read_is_a_configuration_error(tmp_path: Path, command: list[str]) -> None:
    key, _ = make_key(tmp_path / "keys", "mail")
    key.chmod(0o640)
    (tmp_path / "KeyTable").write_text(f"mail example.org:sel:{key}\n")
    (tmp_path / "sg.toml").write_text(f'[server]\nlisten = "127.0.0.1:0"\n[http]\nlisten = ""\n'
                                      f'[dkim_signing]\nkey_table = "{tmp_path / "KeyTable"}"\n')
    result = subprocess.run([sys.executable, "-m", "scattergate", *command, "--config", "sg.toml", "--data-dir", "d"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"configuration error: DKIM private key {key} has mode 0640" in result.stderr
