"""SPF findings against the loopback DNS server: results, identities, bad records, bad DNS."""

from __future__ import annotations

import asyncio

import pytest
import spf

from scattergate.checks import spf as spfcheck
from scattergate.checks.spf import check_helo, check_spf, spf_findings
from scattergate.model import Finding
from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer, resolver_config

ZONE = {
    "example.org": [("TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all"),
                    ("TXT", "google-site-verification=abc")],
    "_spf.example.net": [("TXT", "v=spf1 ip6:2001:db8::/32 ~all")],
    "soft.example.org": [("TXT", "v=spf1 ~all")],
    "neutral.example.org": [("TXT", "v=spf1 ?all")],
    "nospf.example.org": [("TXT", "hello")],
    "mx.example.org": [("TXT", "v=spf1 a mx -all"), ("A", "198.51.100.1"),
                       ("MX", [10, "mail.example.org"])],
    "mail.example.org": [("A", "198.51.100.2")],
    "exp.example.org": [("TXT", "v=spf1 -all exp=why.example.org")],
    "why.example.org": [("TXT", "%{i} is not one of %{d}'s servers")],
    "bad.example.org": [("TXT", "v=spf1 ip4:192.0.2.999 -all")],
    "two.example.org": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")],
    "loop.example.org": [("TXT", "v=spf1 include:loop.example.org -all")],
    "big.example.org": [("TXT", "v=spf1 " + " ".join(f"ip4:203.0.113.{i}" for i in range(150))
                         + " ip4:192.0.2.77 -all")],
    "servfail.example.org": [("TXT", "v=spf1 +all")],
    "inc-servfail.example.org": [("TXT", "v=spf1 include:servfail.example.org -all")],
    "slow.example.org": [("TXT", "v=spf1 +all")],
    "fast.example.org": [("A", "192.0.2.9")],
    "helo.example.org": [("TXT", "v=spf1 a -all"), ("A", "192.0.2.25")],
}


@pytest.mark.parametrize(("ip", "sender", "expected"), [
    ("192.0.2.10", "alice@example.org", "pass"),
    ("2001:db8::5", "alice@example.org", "pass"),  # via include
    ("198.51.100.7", "alice@example.org", "fail"),
    ("198.51.100.7", "alice@soft.example.org", "softfail"),
    ("198.51.100.7", "alice@neutral.example.org", "neutral"),
    ("198.51.100.7", "alice@nospf.example.org", "none"),
    ("198.51.100.7", "alice@nowhere.example.org", "none"),  # NXDOMAIN
    ("198.51.100.1", "alice@mx.example.org", "pass"),  # a
    ("198.51.100.2", "alice@mx.example.org", "pass"),  # mx
    ("192.0.2.77", "alice@big.example.org", "pass"),  # record only fits over TCP
    ("192.0.2.1", "alice@bad.example.org", "permerror"),
    ("192.0.2.1", "alice@two.example.org", "permerror"),
    ("192.0.2.1", "alice@loop.example.org", "permerror"),
])
async def test_results(resolver: Resolver, ip: str, sender: str, expected: str) -> None:
    res = await check_spf(resolver, ip, sender, "mta.example.com")
    assert res.result == expected, res
    f = res.finding()
    assert (f.check, f.result) == ("spf", expected)
    assert f.detail.startswith(f"smtp.mailfrom={sender} ip={ip}")


async def test_fail_carries_the_explanation(resolver: Resolver) -> None:
    res = await check_spf(resolver, "198.51.100.9", "bob@exp.example.org", "h.example.com")
    assert res.result == "fail"
    assert res.explanation == "198.51.100.9 is not one of exp.example.org's servers"
    assert res.finding().detail.endswith("; 198.51.100.9 is not one of exp.example.org's servers")


async def test_helo_identity_and_null_sender(resolver: Resolver) -> None:
    ok = await check_helo(resolver, "192.0.2.25", "helo.example.org")
    assert (ok.result, ok.identity, ok.check) == ("pass", "helo", "spf_helo")
    assert ok.finding() == Finding("spf_helo", "pass", "smtp.helo=helo.example.org ip=192.0.2.25 mech=a")
    bounce = await check_spf(resolver, "192.0.2.26", "", "helo.example.org")
    assert (bounce.result, bounce.identity, bounce.sender) == ("fail", "helo",
                                                               "postmaster@helo.example.org")
    for literal in ("[192.0.2.25]", "localhost", ""):
        assert (await check_helo(resolver, "192.0.2.25", literal)).result == "none"


async def test_dns_failures_are_temperror(resolver: Resolver, server: DnsTestServer) -> None:
    server.servfail.add("servfail.example.org")
    server.drop.add("slow.example.org")
    for domain in ("servfail.example.org", "inc-servfail.example.org", "slow.example.org"):
        res = await check_spf(resolver, "192.0.2.1", f"a@{domain}", "h.example.com")
        assert res.result == "temperror", res
        assert "DNS" in res.explanation


async def test_bad_input_gives_findings_not_exceptions(resolver: Resolver) -> None:
    assert (await check_spf(resolver, "not-an-ip", "a@example.org", "h")).result == "permerror"
    huge = "a@" + "x" * 5000 + ".example.org"
    assert (await check_spf(resolver, "192.0.2.1", huge, "h")).result == "permerror"
    label = "a@" + "x" * 70 + ".example.org"  # label over 63: none (RFC 7208 §4.3)
    assert (await check_spf(resolver, "192.0.2.1", label, "h")).result == "none"
    assert (await check_spf(resolver, "192.0.2.1", "no-at-sign", "h")).result in ("none", "permerror")
    assert (await check_spf(resolver, "192.0.2.1", "a@", "")).result == "none"


async def test_slow_spf_dns_does_not_stall_the_loop(server: DnsTestServer) -> None:
    server.set_zone(ZONE)
    server.delay["slow.example.org"] = 1.0
    patient = Resolver(resolver_config(server, timeout=3.0, lifetime=3.0))  # type: ignore[arg-type]
    slow = asyncio.ensure_future(check_spf(patient, "192.0.2.1", "a@slow.example.org", "h"))
    assert await patient.a("fast.example.org") == ["192.0.2.9"]
    assert not slow.done()
    assert (await slow).result == "pass"
    patient.close()


async def test_findings_helper(resolver: Resolver) -> None:
    assert [f.key for f in await spf_findings(resolver, "192.0.2.10", "a@example.org", "h")] == \
        ["spf.pass"]


def test_pyspf_hook_falls_back_outside_our_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other pyspf users in the process keep pyspf's own DNS."""
    assert spf.DNSLookup is spfcheck._lookup
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(spfcheck, "_pyspf_lookup",
                        lambda name, qtype, strict, timeout: calls.append((name, qtype)) or [])
    assert spf.DNSLookup("example.org", "TXT") == []
    assert calls == [("example.org", "TXT")]
