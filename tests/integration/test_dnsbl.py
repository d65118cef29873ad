"""The safe-mode DNSBL at RCPT, against the real gateway and a loopback DNS server.

The listed client is 127.0.0.2 (clients bind their source address: all of 127/8 is loopback);
the unlisted one 127.0.0.1. BATV is off, so that the DNSBL alone decides. TTLs are 0, so the resolver's cache never hides a query: what is
remembered within a transaction is the check's own doing.
"""

from __future__ import annotations

import smtplib
import socket
from typing import Iterator

import pytest

from tests.support.dialogue import Dialogue
from tests.support.dns_server import DnsTestServer
from tests.support.gateway import GatewayThread
from tests.system.postfix_fixtures import wait_for

V6_LOOPBACK = "1." + "0." * 31  # ::1 as nibbles, reversed
ZONE = {
    "2.0.0.127.bl.test.": [("A", "127.0.0.2"), ("TXT", "Listed for backscatter, see https://bl.test/")],
    f"{V6_LOOPBACK}bl.test.": [("A", "127.0.0.2")],
}
LISTED, UNLISTED = "127.0.0.2", "127.0.0.1"
REFUSAL = "5.7.1 Service unavailable; client [127.0.0.2] listed at bl.test (127.0.0.2: Listed for backscatter, see https://bl.test/)"


class DialogueFrom(Dialogue):
    """A raw SMTP client whose connection comes from a chosen loopback address."""

    def __init__(self, address: tuple[str, int], source: str) -> None:
        self.sock = socket.create_connection(address, timeout=30, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE, ttl=0, soa_minimum=0) as server:
        yield server


@pytest.fixture
def start(gateway, make_config, dns):  # type: ignore[no-untyped-def]
    def start(mode: str = "safe", budget: float = 3.0, thread: type[GatewayThread] = GatewayThread):  # type: ignore[no-untyped-def]
        config = make_config(
            receive={"domains": ["example.org"]},
            # BATV enforcement would refuse these null-sender RCPTs first (batv.missing).
            backscatter={"batv_mode": "off"},
            dnsbl={"zones": ["bl.test"], "mode": mode, "budget": budget},
            dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 5.0, "lifetime": 8.0},
        )
        if thread is GatewayThread:
            return gateway(config)
        gw = thread(config)
        gw.start()
        started.append(gw)
        return gw

    started: list[GatewayThread] = []
    yield start
    for gw in started:
        gw.stop()


def rcpt(gw, source: str, sender: str, recipients: int = 1) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    with DialogueFrom(gw.address, source) as d:
        d.command("EHLO client.example")
        assert d.command(f"MAIL FROM:<{sender}>")[0] == 250
        return [d.command("RCPT TO:<postmaster@example.org>") for _ in range(recipients)]


def a_queries(dns: DnsTestServer) -> list[str]:
    return [q[0] for q in dns.queries if q[1] == "A"]


@pytest.mark.parametrize("sender", ["", "MAILER-DAEMON@backscatterer.example", "postmaster@backscatterer.example"])
def test_a_bounce_from_a_listed_client_is_refused_at_rcpt(start, sender: str) -> None:  # type: ignore[no-untyped-def]
    assert rcpt(start(), LISTED, sender) == [(554, REFUSAL)]


def test_ordinary_mail_from_a_listed_client_is_accepted_in_safe_mode_without_a_lookup(start, dns) -> None:  # type: ignore[no-untyped-def]
    gw = start()
    with smtplib.SMTP(*gw.address, source_address=(LISTED, 0)) as client:
        client.sendmail("alice@example.net", ["postmaster@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    assert len(list((gw.config.maildir / "example.org" / "postmaster" / "new").iterdir())) == 1
    assert a_queries(dns) == []


def test_ordinary_mail_from_a_listed_client_is_refused_in_all_mode(start) -> None:  # type: ignore[no-untyped-def]
    assert rcpt(start("all"), LISTED, "alice@example.net") == [(554, REFUSAL)]


def test_an_unlisted_client_is_accepted(start, dns) -> None:  # type: ignore[no-untyped-def]
    assert rcpt(start(), UNLISTED, "") == [(250, "2.1.5 OK")]
    assert a_queries(dns) == ["1.0.0.127.bl.test"]


def test_one_lookup_per_transaction(start, dns) -> None:  # type: ignore[no-untyped-def]
    gw = start()
    assert [code for code, _ in rcpt(gw, UNLISTED, "", recipients=5)] == [250] * 5
    assert [code for code, _ in rcpt(gw, LISTED, "", recipients=5)] == [554] * 5
    assert a_queries(dns) == ["1.0.0.127.bl.test", "2.0.0.127.bl.test"]
    assert [q[0] for q in dns.queries if q[1] == "TXT"] == ["2.0.0.127.bl.test"]


@pytest.mark.parametrize("knob", ["servfail", "drop"])
def test_a_dnsbl_outage_refuses_nothing_and_is_recorded(start, dns, knob: str) -> None:  # type: ignore[no-untyped-def]
    if knob == "servfail":
        dns.servfail.add("2.0.0.127.bl.test")
    else:
        dns.drop.add("2.0.0.127.bl.test")
    gw = start("all", budget=0.5)  # a dropped query ends as temperror after 0.4 s
    assert rcpt(gw, LISTED, "") == [(250, "2.1.5 OK")]
    with smtplib.SMTP(*gw.address, source_address=(LISTED, 0)) as client:
        client.sendmail("alice@example.net", ["postmaster@example.org"], b"Subject: hi\r\n\r\nhello\r\n")
    def recorded() -> bool:  # the decision log is written in batches: wait for this one
        gw.flush()
        return gw.store.counters().get("findings.dnsbl.temperror", 0) >= 1

    wait_for(recorded, timeout=10, what=f"the temperror finding (counters {gw.store.counters()}, "
                                        f"decisions {gw.store.recent_decisions(3)})")
    assert gw.store.counters()["findings.dnsbl.temperror"] == 1
    (decision,) = gw.store.recent_decisions(1)
    assert decision.verdict == "accept" and any(f.startswith("dnsbl.temperror[bl.test: ") for f in decision.findings)


def test_with_batv_enforced_a_bounce_to_an_untagged_address_is_refused_before_any_lookup(
        gateway, make_config, dns) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(make_config(
        receive={"domains": ["example.org"]}, dnsbl={"zones": ["bl.test"]},
        dns={"nameservers": ["127.0.0.1"], "port": dns.port},
    ))
    assert rcpt(gw, LISTED, "")[0][0] == 550  # batv.missing: local, so no DNSBL query
    assert a_queries(dns) == []
    assert rcpt(gw, LISTED, "postmaster@backscatterer.example") == [(554, REFUSAL)]


class Ipv6GatewayThread(GatewayThread):
    """The SMTP front end on [::1]."""

    host = "::1"


def test_an_ipv6_client_is_looked_up_by_nibbles(start, dns) -> None:  # type: ignore[no-untyped-def]
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this host")
    gw = start(thread=Ipv6GatewayThread)
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        d.command("MAIL FROM:<>")
        code, text = d.command("RCPT TO:<postmaster@example.org>")
    assert (code, text) == (554, "5.7.1 Service unavailable; client [::1] listed at bl.test (127.0.0.2)")
    assert a_queries(dns) == [f"{V6_LOOPBACK}bl.test"]
