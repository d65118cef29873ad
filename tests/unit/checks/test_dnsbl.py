"""The DNSBL check: query names, answer interpretation, and the check against loopback DNS."""

from __future__ import annotations

import pytest

from scattergate.address import parse_path
from scattergate.checks import CheckContext
from scattergate.checks.dnsbl import (
    DnsblCheck,
    Status,
    interpret,
    is_bounce_like,
    printable,
    query_name,
    valid_zone,
)
from scattergate.model import Envelope, Finding, Session
from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer

V6 = "2001:db8::1"
V6_NAME = ".".join(reversed("20010db8" + "0" * 23 + "1"))

ZONE = {
    "2.0.0.127.bl.test.": [("A", "127.0.0.2"), ("TXT", "Listed: see https://bl.test/?ip=127.0.0.2")],
    "3.0.0.127.bl.test.": [("A", "127.0.0.3"), ("A", "127.0.0.2")],
    "4.0.0.127.bl.test.": [("A", "127.255.255.254")],
    "5.0.0.127.bl.test.": [("A", "198.51.100.1")],  # a wildcard of an expired list
    "6.0.0.127.bl.test.": [("A", "127.0.0.2"), ("TXT", "bad\u0007text\tand a very long tail " + "x" * 300)],
    "2.0.0.127.other.test.": [("A", "127.0.0.4")],
    f"{V6_NAME}.bl.test.": [("A", "127.0.0.2")],
}


# -- pure parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ip, name", [
    ("192.0.2.1", "1.2.0.192.bl.test"),
    ("127.0.0.2", "2.0.0.127.bl.test"),
    ("::ffff:192.0.2.1", "1.2.0.192.bl.test"),  # IPv4-mapped: asked as IPv4
    (V6, f"{V6_NAME}.bl.test"),
    ("::1", "1." + "0." * 31 + "bl.test"),
    ("fe80::1%eth0", "1.0.0.0." + "0." * 24 + "0.8.e.f.bl.test"),
])
def test_query_name(ip: str, name: str) -> None:
    assert query_name(ip, "BL.test.") == name


def test_query_name_nibbles_are_the_exploded_address_reversed() -> None:
    name = query_name("2001:db8:1234:5678:9abc:def0:1:2", "bl.test")
    assert name is not None
    nibbles = name.removesuffix(".bl.test").split(".")
    assert len(nibbles) == 32 and "".join(reversed(nibbles)) == "20010db8123456789abcdef000010002"


@pytest.mark.parametrize("ip", ["unknown", "", "300.1.1.1", "example.org"])
def test_query_name_of_non_addresses(ip: str) -> None:
    assert query_name(ip, "bl.test") is None


@pytest.mark.parametrize("records, status, codes", [
    ([], Status.NOT_LISTED, ()),
    (["127.0.0.2"], Status.LISTED, ("127.0.0.2",)),
    (["127.0.0.4", "127.0.0.2", "127.0.0.2"], Status.LISTED, ("127.0.0.2", "127.0.0.4")),
    (["127.255.255.254"], Status.REFUSED, ("127.255.255.254",)),
    (["127.255.255.255", "127.255.255.252"], Status.REFUSED, ("127.255.255.252", "127.255.255.255")),
    (["127.255.255.255", "127.0.0.2"], Status.LISTED, ("127.0.0.2",)),
    (["198.51.100.1"], Status.NOT_LISTED, ()),
    (["not-an-ip"], Status.NOT_LISTED, ()),
])
def test_interpret(records: list[str], status: Status, codes: tuple[str, ...]) -> None:
    answer = interpret(records)
    assert (answer.status, answer.codes) == (status, codes)


def test_interpret_keeps_what_it_ignored() -> None:
    assert interpret(["198.51.100.1", "127.0.0.2"]).ignored == ("198.51.100.1",)


@pytest.mark.parametrize("sender, bounce", [
    ("<>", True), ("<postmaster@example.net>", True), ("<MAILER-DAEMON@example.net>", True),
    ("<Postmaster@example.net>", True), ("<alice@example.net>", False), ("<postmaster-x@example.net>", False),
])
def test_bounce_like_senders(sender: str, bounce: bool) -> None:
    assert is_bounce_like(parse_path(sender, allow_null=True)) is bounce


def test_printable() -> None:
    assert printable("a\r\nb\x00c  d\u00e9") == "a b c d"
    assert len(printable("x" * 500)) == 200 and printable("x" * 500).endswith("...")


@pytest.mark.parametrize("zone, ok", [
    ("ips.backscatterer.org", True), ("bl.test.", True), ("zen.spamhaus.org", True),
    ("org", False), ("", False), ("bl test", False), ("127.0.0.1", False), ("-bad.test", False),
    ("bl..test", False),
])
def test_valid_zone(zone: str, ok: bool) -> None:
    assert valid_zone(zone) is ok


# -- the check against a loopback DNS server ---------------------------------------------------

def ctx(ip: str, sender: str = "<>", *, trusted: bool = False, envelope: Envelope | None = None,
        earlier: tuple[Finding, ...] = ()) -> CheckContext:
    session = Session(ip, trusted=trusted)
    return CheckContext(session, envelope or Envelope(parse_path(sender, allow_null=True)),
                        parse_path("<alice@example.org>"), earlier=earlier)


def a_queries(server: DnsTestServer) -> list[str]:
    return [q[0] for q in server.queries if q[1] == "A"]


async def test_listed_with_txt(resolver: Resolver) -> None:
    (finding,) = await DnsblCheck(resolver, ["bl.test"])(ctx("127.0.0.2"))
    assert finding.key == "dnsbl.listed"
    assert finding.detail == "client [127.0.0.2] listed at bl.test (127.0.0.2: Listed: see https://bl.test/?ip=127.0.0.2)"


async def test_listed_several_codes_without_txt(resolver: Resolver) -> None:
    (finding,) = await DnsblCheck(resolver, ["bl.test"])(ctx("127.0.0.3"))
    assert finding.detail == "client [127.0.0.3] listed at bl.test (127.0.0.2,127.0.0.3)"


async def test_txt_can_be_left_out(resolver: Resolver, server: DnsTestServer) -> None:
    (finding,) = await DnsblCheck(resolver, ["bl.test"], txt=False)(ctx("127.0.0.2"))
    assert finding.detail.endswith("(127.0.0.2)") and not [q for q in server.queries if q[1] == "TXT"]


async def test_hostile_txt_is_made_printable(resolver: Resolver) -> None:
    (finding,) = await DnsblCheck(resolver, ["bl.test"])(ctx("127.0.0.6"))
    assert "bad text and a very long tail" in finding.detail and len(finding.detail) < 300
    assert all(" " <= c <= "~" for c in finding.detail)


async def test_not_listed_refused_and_bogus_answers(resolver: Resolver, caplog: pytest.LogCaptureFixture) -> None:
    check = DnsblCheck(resolver, ["bl.test"])
    assert await check(ctx("127.0.0.9")) == []  # NXDOMAIN
    assert await check(ctx("127.0.0.5")) == []  # outside 127/8
    assert "non-127/8 answer 198.51.100.1" in caplog.text
    (refused,) = await check(ctx("127.0.0.4"))
    assert refused.key == "dnsbl.refused" and "127.255.255.254" in refused.detail
    assert "refused our queries" in caplog.text
    await check(ctx("127.0.0.4"))
    assert caplog.text.count("refused our queries") == 1  # not once per client


async def test_zones_are_asked_concurrently_and_each_reports(resolver: Resolver, server: DnsTestServer) -> None:
    server.drop.add("2.0.0.127.bl.test")  # the first zone never answers...
    check = DnsblCheck(resolver, ["bl.test", "other.test"], budget=0.5)
    findings = sorted(await check(ctx("127.0.0.2")), key=lambda f: f.key)
    # ...and the second is asked beside it, not after it: its listing still counts.
    assert [f.key for f in findings] == ["dnsbl.listed", "dnsbl.temperror"]
    assert findings[0].detail == "client [127.0.0.2] listed at other.test (127.0.0.4)"
    assert findings[1].detail == "bl.test: no answer within 0.4 s"


async def test_temporary_failures(resolver: Resolver, server: DnsTestServer) -> None:
    server.servfail.add("2.0.0.127.bl.test")
    server.drop.add("2.0.0.127.other.test")
    check = DnsblCheck(resolver, ["bl.test", "other.test"], budget=0.5)
    findings = await check(ctx("127.0.0.2"))
    assert sorted(f.key for f in findings) == ["dnsbl.temperror", "dnsbl.temperror"]
    assert any("other.test: no answer within 0.4 s" == f.detail for f in findings)


async def test_safe_mode_asks_only_for_bounce_like_senders(resolver: Resolver, server: DnsTestServer) -> None:
    safe = DnsblCheck(resolver, ["bl.test"])
    assert await safe(ctx("127.0.0.2", "<alice@example.net>")) == []
    assert a_queries(server) == []  # an answer that cannot matter is not asked for
    assert [f.key for f in await safe(ctx("127.0.0.2", "<postmaster@example.net>"))] == ["dnsbl.listed"]
    everyone = DnsblCheck(resolver, ["bl.test"], mode="all")
    assert [f.key for f in await everyone(ctx("127.0.0.2", "<alice@example.net>"))] == ["dnsbl.listed"]


async def test_trusted_clients_and_non_addresses_are_never_looked_up(resolver: Resolver, server: DnsTestServer) -> None:
    check = DnsblCheck(resolver, ["bl.test"], mode="all")
    assert await check(ctx("127.0.0.2", trusted=True)) == []
    assert await check(ctx("unknown")) == []
    assert a_queries(server) == []


async def test_one_lookup_per_transaction(server: DnsTestServer) -> None:
    from tests.support.dns_server import resolver_config

    resolver = Resolver(resolver_config(server, cache_size=0))  # only the envelope remembers
    try:
        check = DnsblCheck(resolver, ["bl.test"])
        envelope = Envelope(parse_path("<>", allow_null=True))
        for _ in range(5):
            assert [f.key for f in await check(ctx("127.0.0.2", envelope=envelope))] == ["dnsbl.listed"]
        assert a_queries(server) == ["2.0.0.127.bl.test"]
        await check(ctx("127.0.0.2"))  # a new transaction asks again
        assert len(a_queries(server)) == 2
    finally:
        resolver.close()


async def test_ipv6_client(resolver: Resolver) -> None:
    (finding,) = await DnsblCheck(resolver, ["bl.test"])(ctx(V6))
    assert finding.detail.startswith(f"client [{V6}] listed at bl.test (127.0.0.2")


async def test_a_bounce_to_a_valid_batv_address_is_exempt(resolver: Resolver) -> None:
    check = DnsblCheck(resolver, ["bl.test"])
    envelope = Envelope(parse_path("<>", allow_null=True))
    valid = (Finding("batv", "valid", "alice@example.org"),)
    (finding,) = await check(ctx("127.0.0.2", envelope=envelope, earlier=valid))
    assert finding.key == "dnsbl.exempt" and finding.detail.endswith("; valid BATV tag")
    # The next recipient of the same bounce has no valid tag: refused, from the same lookup.
    (finding,) = await check(ctx("127.0.0.2", envelope=envelope))
    assert finding.key == "dnsbl.listed"
