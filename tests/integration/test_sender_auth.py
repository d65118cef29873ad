"""SPF at RCPT and DKIM/DMARC at end of DATA against a real DNS server on loopback."""

from __future__ import annotations

import smtplib
import threading

import pytest

from tests.support.dialogue import Dialogue
from tests.support.dns_server import DnsTestServer

ZONE = {
    "pass.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
    "fail.example.": [("TXT", "v=spf1 -all")],
    "slow.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
    "broken.example.": [("TXT", "v=spf1 ip4:999.1.1.1 -all")],
}


@pytest.fixture
def dns():  # type: ignore[no-untyped-def]
    with DnsTestServer(ZONE) as server:
        yield server


@pytest.fixture
def auth_gw(gateway, make_config, dns):  # type: ignore[no-untyped-def]
    config = make_config(
        receive={"domains": ["example.org"]},
        auth={"spf": True, "dkim": True, "dmarc": True, "spf_budget": 10.0},
        dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 5.0, "lifetime": 8.0},
    )
    return gateway(config)


def deliver(gw, sender: str, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(*gw.address) as client:
        client.sendmail(sender, ["postmaster@example.org"], data)
    folder = gw.config.maildir / "example.org" / "postmaster" / "new"
    (path,) = sorted(folder.iterdir())[-1:]
    return path.read_bytes()


def test_spf_pass_is_recorded_in_authentication_results(auth_gw) -> None:  # type: ignore[no-untyped-def]
    stored = deliver(auth_gw, "someone@pass.example", b"From: someone@pass.example\r\nSubject: x\r\n\r\nhi\r\n")
    header = [l for l in stored.split(b"\r\n") if l.startswith(b"Authentication-Results:")]
    assert len(header) == 1
    assert b"mx.test.example;" in header[0] and b"spf=pass smtp.mailfrom=someone@pass.example" in header[0]
    assert b"dkim=none" in header[0]


def test_forged_results_claiming_our_name_are_removed(auth_gw) -> None:  # type: ignore[no-untyped-def]
    forged = b"Authentication-Results: mx.test.example; spf=pass smtp.mailfrom=ceo@bank.example\r\n"
    other = b"Authentication-Results: other.example; dkim=pass header.d=x.example\r\n"
    stored = deliver(auth_gw, "someone@pass.example", forged + other + b"Subject: x\r\n\r\nhi\r\n")
    assert b"ceo@bank.example" not in stored
    assert other.rstrip() in stored  # someone else's results are not ours to remove


def test_spf_fail_is_refused_at_rcpt(auth_gw) -> None:  # type: ignore[no-untyped-def]
    with Dialogue(auth_gw.address) as d:
        d.command("EHLO client.example")
        d.command("MAIL FROM:<forger@fail.example>")
        code, text = d.command("RCPT TO:<postmaster@example.org>")
        assert (code, text[:6]) == (550, "5.7.23")


def test_broken_spf_record_is_a_permerror_not_a_crash(auth_gw) -> None:  # type: ignore[no-untyped-def]
    stored = deliver(auth_gw, "someone@broken.example", b"Subject: x\r\n\r\nhi\r\n")
    assert b"spf=permerror" in stored


def test_servfail_gives_temperror_and_accepts_by_default(auth_gw, dns) -> None:  # type: ignore[no-untyped-def]
    dns.servfail.add("pass.example")
    stored = deliver(auth_gw, "someone@pass.example", b"Subject: x\r\n\r\nhi\r\n")
    assert b"spf=temperror" in stored


def test_servfail_tempfails_when_the_policy_says_so(gateway, make_config, dns) -> None:  # type: ignore[no-untyped-def]
    dns.servfail.add("pass.example")
    gw = gateway(make_config(
        receive={"domains": ["example.org"]}, auth={"spf": True},
        dns={"nameservers": ["127.0.0.1"], "port": dns.port},
        policy={"actions": {"spf.temperror": "tempfail"}, "replies": {}},
    ))
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        d.command("MAIL FROM:<someone@pass.example>")
        assert d.command("RCPT TO:<postmaster@example.org>")[0] == 451


def test_a_slow_dns_answer_does_not_stall_other_sessions(auth_gw, dns) -> None:  # type: ignore[no-untyped-def]
    dns.delay["slow.example"] = 3.0
    order: list[str] = []
    slow_started = threading.Event()

    def slow() -> None:
        with Dialogue(auth_gw.address) as d:
            d.command("EHLO client.example")
            d.command("MAIL FROM:<someone@slow.example>")
            slow_started.set()
            d.command("RCPT TO:<postmaster@example.org>")
            order.append("slow")

    thread = threading.Thread(target=slow)
    thread.start()
    slow_started.wait(10)
    deliver(auth_gw, "someone@pass.example", b"Subject: fast\r\n\r\nhi\r\n")
    order.append("fast")
    thread.join(30)
    assert order == ["fast", "slow"]



async def test_spf_results_are_reused_briefly_but_temperrors_are_not(dns) -> None:  # type: ignore[no-untyped-def]
    from scattergate.address import parse_path
    from scattergate.checks import CheckContext
    from scattergate.checks.senderauth import SpfCheck
    from scattergate.model import Envelope, Session
    from scattergate.net.dns import Resolver
    from tests.support.dns_server import resolver_config

    resolver = Resolver(resolver_config(dns, cache_size=0))  # every check_host() shows as a query
    clock = [100.0]
    check = SpfCheck(resolver, receiver="mx.test.example", budget=5.0, clock=lambda: clock[0])

    async def run(sender: str) -> str:
        ctx = CheckContext(Session("127.0.0.1", helo="client.example"), Envelope(parse_path(f"<{sender}>")))
        (finding,) = await check(ctx)
        return finding.result

    def txt_queries(name: str) -> int:
        return sum(1 for q in dns.queries if q[0].rstrip(".") == name and q[1] == "TXT")

    try:
        assert [await run("someone@pass.example") for _ in range(3)] == ["pass"] * 3
        assert txt_queries("pass.example") == 1
        clock[0] += SpfCheck.RESULT_TTL + 1
        await run("someone@pass.example")
        assert txt_queries("pass.example") == 2  # expired: asked again
        dns.servfail.add("broken-now.example")
        assert [await run("someone@broken-now.example") for _ in range(2)] == ["temperror"] * 2
        assert txt_queries("broken-now.example") >= 2  # a temporary error is not remembered
    finally:
        resolver.close()
