"""Sender-auth logic in the pipeline (checks/senderauth.py): SPF once per identity, kept for
a short time but never when it failed temporarily; our own clients not judged; DMARC on the
single From domain."""

from __future__ import annotations

from typing import Iterator

import pytest

from scattergate.address import parse_path
from scattergate.checks import CheckContext
from scattergate.checks.senderauth import DkimDmarcCheck, SpfCheck
from scattergate.model import Envelope, Session
from scattergate.net.dns import Resolver
from tests.support.dns_server import DnsTestServer, resolver_config

ZONE = {"pass.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "other.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE, ttl=0) as server:  # ttl 0: the resolver keeps nothing, we see every ask
        yield server


def context(sender: str, *, ip: str = "192.0.2.1", trusted: bool = False) -> CheckContext:
    session = Session(ip, trusted=trusted)
    session.helo = "client.pass.example"
    return CheckContext(session, Envelope(parse_path(sender, allow_null=True)))


async def test_spf_is_asked_once_per_identity_within_its_ttl(dns: DnsTestServer) -> None:
    clock = Clock()
    check = SpfCheck(Resolver(resolver_config(dns, timeout=3.0, lifetime=3.0)), receiver="mx.test.example",
                     budget=5.0, clock=clock)
    ctx = context("<a@pass.example>")
    assert [f.key for f in await check(ctx)] == ["spf.pass"]
    assert ctx.envelope is not None and ctx.envelope.spf.result == "pass"  # kept for the sender proof
    asked = len(dns.queries)
    assert asked > 0
    assert [f.key for f in await check(context("<a@pass.example>"))] == ["spf.pass"]
    assert len(dns.queries) == asked  # same client, sender and HELO: the kept result
    await check(context("<a@other.example>"))
    assert len(dns.queries) > asked  # another identity is checked
    asked = len(dns.queries)
    clock.now += SpfCheck.RESULT_TTL + 1
    await check(context("<a@pass.example>"))
    assert len(dns.queries) > asked  # expired: checked again


async def test_a_temporary_error_is_never_kept(dns: DnsTestServer) -> None:
    check = SpfCheck(Resolver(resolver_config(dns, timeout=3.0, lifetime=3.0)), receiver="mx.test.example",
                     budget=5.0, clock=Clock())
    dns.servfail.add("pass.example")
    assert [f.key for f in await check(context("<a@pass.example>"))] == ["spf.temperror"]
    dns.servfail.clear()
    assert [f.key for f in await check(context("<a@pass.example>"))] == ["spf.pass"]


async def test_the_null_sender_is_checked_by_its_helo(dns: DnsTestServer) -> None:
    check = SpfCheck(Resolver(resolver_config(dns, timeout=3.0, lifetime=3.0)), receiver="mx.test.example",
                     budget=5.0)
    dns.add("client.pass.example", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    ctx = context("<>")
    (finding,) = await check(ctx)
    assert finding.key == "spf_helo.pass"
    assert ctx.envelope is not None and ctx.envelope.spf.identity == "helo"


async def test_our_own_clients_are_not_judged(dns: DnsTestServer) -> None:
    resolver = Resolver(resolver_config(dns))
    assert await SpfCheck(resolver, receiver="mx", budget=5.0)(context("<a@pass.example>", trusted=True)) == []
    ctx = context("<a@pass.example>", trusted=True)
    ctx.content = b"From: a@pass.example\r\n\r\nhi\r\n"
    assert await DkimDmarcCheck(resolver, dmarc=True)(ctx) == []
    assert dns.queries == []


@pytest.mark.parametrize(("head", "result"), [
    (b"From: Alice <alice@Folded.EXAMPLE>\r\n", "dmarc.fail"),
    # Folded right after the colon: the From is still one author (this used to be a permerror).
    (b"From:\r\n =?utf-8?q?Al?= <alice@folded.example>\r\n", "dmarc.fail"),
    (b"From: a@folded.example\r\nFrom: b@folded.example\r\n", "dmarc.permerror"),  # two From fields
    (b"From: a@folded.example, b@folded.example\r\n", "dmarc.permerror"),  # two authors
    (b"Subject: no author\r\n", "dmarc.permerror"),
])
async def test_dmarc_is_judged_on_the_single_from_domain(dns: DnsTestServer, head: bytes, result: str) -> None:
    dns.add("_dmarc.folded.example", "TXT", "v=DMARC1; p=none")
    ctx = context("<a@pass.example>")
    ctx.content = head + b"Subject: x\r\n\r\nFrom: body@not.header\r\n"
    findings = await DkimDmarcCheck(Resolver(resolver_config(dns, timeout=3.0, lifetime=3.0)), dmarc=True)(ctx)
    assert [f.key for f in findings] == ["dkim.none", result]
