"""DMARC: alignment, record parsing, policy discovery over loopback DNS, results."""

from __future__ import annotations

import email.utils

import pytest

from scattergate.checks.dkim import DkimResult
from scattergate.checks.dmarc import (
    DmarcRecordError, FromHeaderError, aligned, check_dmarc, dmarc_for_message, header_from_domain,
    organizational_domain, parse_record,
)
from scattergate.checks.spf import SpfResult
from scattergate.model import Finding
from scattergate.orgdomain import normalize
from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer

ZONE = {
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.org")],
    "_dmarc.strict.example": [("TXT", "v=DMARC1; p=quarantine; adkim=s; aspf=s")],
    "_dmarc.example.co.uk": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.two.example": [("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=reject")],
    "_dmarc.broken.example": [("TXT", "v=DMARC1; p=bogus")],
    "_dmarc.other.example": [("TXT", "some other text")],
    "_dmarc.slow.example": [("TXT", "v=DMARC1; p=reject")],
}


def spf_pass(domain: str) -> SpfResult:
    return SpfResult("pass", "mailfrom", domain, f"bounce@{domain}", "192.0.2.1")


def dkim_pass(domain: str) -> DkimResult:
    return DkimResult("pass", domain, "sel")


@pytest.mark.parametrize(("a", "b", "strict", "expected"), [
    ("example.org", "example.org", True, True),
    ("Example.ORG.", "example.org", True, True),
    ("mail.example.org", "example.org", False, True),
    ("mail.example.org", "example.org", True, False),
    ("a.example.org", "b.example.org", False, True),
    ("example.org", "example.net", False, False),
    ("a.example.co.uk", "b.example.co.uk", False, True),
    ("example.co.uk", "other.co.uk", False, False),  # co.uk is a public suffix
    ("a.github.io", "b.github.io", False, False),  # so is github.io (private section)
    ("", "example.org", False, False),
    ("bücher.de", "xn--bcher-kva.de", True, True),
])
def test_aligned(a: str, b: str, strict: bool, expected: bool) -> None:
    assert aligned(a, b, strict) is expected
    assert aligned(b, a, strict) is expected


def test_organizational_domain() -> None:
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("co.uk") == "co.uk"
    assert organizational_domain("MAIL.Example.org.") == "example.org"


def test_parse_record() -> None:
    p = parse_record("v=DMARC1;p=reject; sp=none; adkim=s; pct=50; x=unknown")
    assert (p.p, p.sp, p.adkim, p.aspf, p.pct) == ("reject", "none", "s", "r", 50)
    assert parse_record("v=DMARC1; p=quarantine").sp == "quarantine"
    junk = parse_record("v=DMARC1; p=none; adkim=x; pct=200; garbage; aspf=")
    assert (junk.adkim, junk.aspf, junk.pct) == ("r", "r", 100)
    # invalid p= but a valid rua=: act as p=none (RFC 7489 §6.6.3)
    assert parse_record("v=DMARC1; p=nonsense; rua=mailto:a@example.org").p == "none"
    for bad in ("v=DMARC1", "v=DMARC1; p=bogus", "v=spf1 -all", "p=reject; v=DMARC1",
                "v=DMARC1; p=reject; sp=sometimes", "v=DMARC1; p=none; " + "x" * 5000):
        with pytest.raises(DmarcRecordError):
            parse_record(bad)


async def test_pass_by_dkim_or_spf(resolver: Resolver) -> None:
    by_dkim = await check_dmarc(resolver, "example.org", None, [dkim_pass("mail.example.org")])
    assert by_dkim.finding() == Finding(
        "dmarc", "pass", "header.from=example.org p=reject sp=quarantine policy=reject aligned=dkim")
    by_spf = await check_dmarc(resolver, "example.org", spf_pass("bounces.example.org"), [])
    assert (by_spf.result, by_spf.aligned_by) == ("pass", ("spf",))


async def test_fail_when_nothing_aligns(resolver: Resolver) -> None:
    res = await check_dmarc(resolver, "example.org", spf_pass("example.net"),
                            [dkim_pass("example.net"), DkimResult("fail", "example.org", "s")])
    assert res.finding().key == "dmarc.fail"
    assert "p=reject" in res.finding().detail


async def test_strict_alignment(resolver: Resolver) -> None:
    res = await check_dmarc(resolver, "strict.example", spf_pass("mail.strict.example"),
                            [dkim_pass("mail.strict.example")])
    assert res.result == "fail"
    assert (await check_dmarc(resolver, "strict.example", None,
                              [dkim_pass("strict.example")])).result == "pass"


async def test_organizational_fallback_applies_sp(resolver: Resolver) -> None:
    res = await check_dmarc(resolver, "news.example.org", None, [])
    assert (res.result, res.policy_domain, res.requested) == ("fail", "example.org", "quarantine")
    assert "policy=quarantine" in res.finding().detail
    uk = await check_dmarc(resolver, "shop.example.co.uk", None, [dkim_pass("example.co.uk")])
    assert (uk.result, uk.policy_domain) == ("pass", "example.co.uk")


async def test_none_temperror_permerror(resolver: Resolver, server: DnsTestServer) -> None:
    assert (await check_dmarc(resolver, "nodmarc.example", None, [])).result == "none"
    assert (await check_dmarc(resolver, "other.example", None, [])).result == "none"
    two = await check_dmarc(resolver, "two.example", None, [])
    assert two.result == "permerror" and "2 DMARC records" in two.reason
    assert (await check_dmarc(resolver, "broken.example", None, [])).result == "permerror"
    for bad in ("", "not a domain", "a..b", "x" * 300):
        assert (await check_dmarc(resolver, bad, None, [])).result == "permerror"
    server.servfail.add("_dmarc.example.org")
    assert (await check_dmarc(resolver, "example.org", None, [])).result == "temperror"
    server.drop.add("_dmarc.slow.example")
    assert (await check_dmarc(resolver, "slow.example", None, [])).result == "temperror"


def test_header_from_domain() -> None:
    assert header_from_domain(b"From: \"A, B\" <a@Example.ORG>\r\nTo: x@y\r\n\r\nbody") == "example.org"
    assert header_from_domain(b"From:\r\n \"A\"\r\n\t<a@folded.example>\r\nTo: x@y\r\n\r\nFrom: b@body.example") == "folded.example"
    for bad in (b"To: x@y\r\n\r\n", b"From: a@x.example\r\nFrom: b@y.example\r\n\r\n",
                b"From: a@x.example, b@y.example\r\n\r\n", b"From: nobody\r\n\r\n"):
        with pytest.raises(ValueError):
            header_from_domain(bad)


async def test_dmarc_for_message(resolver: Resolver) -> None:
    msg = b"From: a@example.org\r\n\r\nhi\r\n"
    assert (await dmarc_for_message(resolver, msg, spf_pass("example.org"), [])).result == "pass"
    bad = await dmarc_for_message(resolver, b"Subject: x\r\n\r\n", None, [])
    assert bad.finding() == Finding("dmarc", "permerror", "0 From header fields")


@pytest.mark.parametrize("value", [
    "<a@Example.ORG>", "a@example.org", " \t<first.last+tag@sub.example.org> ", "o'brien@x-y.example",
    # not one plain address: the address-list parser decides, as before
    "<a@b.example", "a@b.example>", "a..b@c.example", "Name <a@b.example>", "<a@b.example> (comment)",
    "a@b.example, c@d.example", "<a@[192.0.2.1]>", "\"q uoted\"@b.example",
])
def test_header_from_domain_agrees_with_the_address_list_parser(value: str) -> None:
    """The plain-address shortcut gives the parser's answer, refusal included."""
    addresses = [a for _, a in email.utils.getaddresses([value]) if a]
    message = f"From: {value}\r\nTo: x@y\r\n\r\nbody".encode()
    if len(addresses) == 1 and "@" in addresses[0] and addresses[0].rpartition("@")[2]:
        assert header_from_domain(message) == normalize(addresses[0].rpartition("@")[2])
    else:
        with pytest.raises(FromHeaderError):
            header_from_domain(message)
