"""STARTTLS towards the downstream (delivery.tls*), against a real TLS-speaking aiosmtpd sink:
a message that may not leave without verified TLS does not leave — 451 in proxy mode, kept
queued in spool mode — and opportunistic TLS takes what it is offered."""

from __future__ import annotations

import smtplib
from typing import Any, Callable, Iterator

import pytest

from scattergate.config import ConfigError
from tests.conftest import require_binary
from tests.support.polling import wait_for
from tests.support.tls import Pki, TlsSink, make_pki, server_context

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: tls\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(require_binary("openssl"), tmp_path_factory.mktemp("pki"))


@pytest.fixture
def sink(pki: Pki) -> Iterator[Callable[..., TlsSink]]:
    """A downstream offering STARTTLS with the CA-signed certificate, the self-signed one, or none."""
    started: list[TlsSink] = []

    def start(cert: str = "ca") -> TlsSink:
        context = None
        if cert != "none":
            context = server_context(pki.cert if cert == "ca" else pki.self_signed_cert, pki.key)
        started.append(TlsSink(context).start())
        return started[-1]

    yield start
    for each in started:
        each.stop()


def send(address: tuple[str, int]) -> tuple[int, str]:
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail("a@sender.example")
        assert client.rcpt("user@example.org")[0] == 250
        code, text = client.data(MESSAGE)
        return code, text.decode()


def proxy(make_config, downstream: TlsSink, **tls: Any):  # type: ignore[no-untyped-def]
    return make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": downstream.address, "verify_recipients": False, "relay_timeout": 10.0, **tls},
    )


def test_required_and_verified_with_the_ca_file_and_server_name(gateway, make_config, sink, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")
    gw = gateway(proxy(make_config, downstream, tls="required", tls_ca_file=str(pki.ca),
                       tls_server_name="downstream.test.example"))
    code, text = send(gw.address)
    assert code == 250, text
    (message,) = downstream.messages
    assert message["tls"] and b"Subject: tls" in message["content"]


@pytest.mark.parametrize("settings", [
    {},  # the test CA is not among the system's CAs
    {"tls_server_name": "other.test.example"},  # a name the certificate does not carry
], ids=["unknown-ca", "wrong-name"])
def test_required_with_a_failed_verification_is_451_never_250(gateway, make_config, sink, pki: Pki, settings) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")
    if "tls_server_name" in settings:
        settings = {**settings, "tls_ca_file": str(pki.ca)}
    gw = gateway(proxy(make_config, downstream, tls="required", **settings))
    assert send(gw.address) == (451, "4.7.5 TLS with the downstream failed (certificate not verified?); try again later")
    assert downstream.messages == []


def test_verifying_an_ip_needs_the_server_name(gateway, make_config, sink, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")  # the relay is 127.0.0.1; the certificate names no IP address
    gw = gateway(proxy(make_config, downstream, tls="required", tls_ca_file=str(pki.ca)))
    assert send(gw.address)[0] == 451
    assert downstream.messages == []


def test_required_but_not_offered_is_451(gateway, make_config, sink) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("none")
    gw = gateway(proxy(make_config, downstream, tls="required"))
    code, text = send(gw.address)
    assert (code, text.split()[0]) == (451, "4.7.4")
    assert downstream.messages == []


def test_required_without_verification_takes_a_self_signed_certificate(gateway, make_config, sink) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("self-signed")
    gw = gateway(proxy(make_config, downstream, tls="required", tls_verify=False))
    assert send(gw.address)[0] == 250
    assert downstream.messages[0]["tls"]


@pytest.mark.parametrize("cert, encrypted", [("self-signed", True), ("none", False)])
def test_opportunistic_uses_tls_when_offered(gateway, make_config, sink, cert: str, encrypted: bool) -> None:  # type: ignore[no-untyped-def]
    downstream = sink(cert)
    gw = gateway(proxy(make_config, downstream, tls="opportunistic"))  # tls_verify (default true) is moot
    assert send(gw.address)[0] == 250
    assert send(gw.address)[0] == 250  # again, over the pooled connection
    assert [m["tls"] for m in downstream.messages] == [encrypted, encrypted]


def test_recipient_probes_use_tls_too(gateway, make_config, sink, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")
    gw = gateway(make_config(receive={"domains": ["example.org"]},
                             delivery={"relay": downstream.address, "tls": "required"}))
    with smtplib.SMTP(*gw.address) as client:  # verification fails: the probe cannot ask, so 4xx
        client.ehlo("client.example")
        client.mail("a@sender.example")
        assert 400 <= client.rcpt("user@example.org")[0] < 500


def spool(make_config, downstream: TlsSink, **tls: Any):  # type: ignore[no-untyped-def]
    return make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": downstream.address, "verify_recipients": False, "relay_timeout": 10.0, **tls},
        spool={"enabled": True, "retry_initial": 300.0},
    )


def test_spool_keeps_the_message_queued_when_verification_fails(gateway, make_config, sink) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")
    gw = gateway(spool(make_config, downstream, tls="required"))
    code, text = send(gw.address)
    assert code == 250 and "queued as" in text
    queue = gw.gateway.spool

    def tried() -> bool:
        entries = list(queue.entries())
        return len(entries) == 1 and entries[0].attempts >= 1

    assert wait_for(tried)
    (entry,) = queue.entries()
    assert [r.state for r in entry.recipients] == ["pending"]  # retried later, never bounced
    assert entry.recipients[0].reply.startswith("451 4.7.5")
    assert downstream.messages == []


def test_spool_delivers_over_verified_tls(gateway, make_config, sink, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    downstream = sink("ca")
    gw = gateway(spool(make_config, downstream, tls="required", tls_ca_file=str(pki.ca),
                       tls_server_name="downstream.test.example"))
    assert send(gw.address)[0] == 250
    assert wait_for(lambda: len(downstream.messages) == 1 and len(gw.gateway.spool) == 0)
    assert downstream.messages[0]["tls"]


def test_bad_downstream_tls_settings_are_config_errors(make_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="delivery.tls"):
        make_config(delivery={"relay": "127.0.0.1:25", "tls": "always"})
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="delivery.tls_ca_file"):
        make_config(delivery={"relay": "127.0.0.1:25", "tls": "required", "tls_ca_file": str(bogus)})
