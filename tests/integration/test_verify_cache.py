"""Recipient verification against a downstream that knows some users and not others.

smtp-sink refuses all or nothing, so this downstream is a small aiosmtpd server on loopback
that answers per address and counts the probes it gets.
"""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP

from scattergate.address import parse_path
from scattergate.checks.verify import RecipientVerifier
from scattergate.delivery.relay import DownstreamPool, Relay


class Directory:
    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.probes: list[str] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def handle_RCPT(self, server, session, envelope, address, options):  # type: ignore[no-untyped-def]
        self.probes.append(address)
        await self.hold.wait()
        if address in self.known:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address


async def downstream(directory: Directory) -> tuple[asyncio.AbstractServer, Relay]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(directory, hostname="down.example"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay = Relay(DownstreamPool("127.0.0.1", port, size=4, timeout=5, local_hostname="mx.test"))
    return server, relay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_answers_are_cached_for_their_ttls() -> None:
    directory = Directory({"user@example.org"})
    server, relay = await downstream(directory)
    clock = Clock()
    verifier = RecipientVerifier(relay, lambda d: True, positive_ttl=60, negative_ttl=10, clock=clock)
    try:
        assert (await verifier.lookup("user@example.org")).code == 250
        assert (await verifier.lookup("ghost@example.org")).code == 550
        assert (await verifier.lookup("user@example.org")).code == 250
        assert (await verifier.lookup("ghost@example.org")).code == 550
        assert directory.probes == ["user@example.org", "ghost@example.org"]
        clock.now += 11  # negative answer expired, positive one not
        await verifier.lookup("ghost@example.org")
        await verifier.lookup("user@example.org")
        assert directory.probes == ["user@example.org", "ghost@example.org", "ghost@example.org"]
    finally:
        await relay.pool.close()
        server.close()


async def test_concurrent_lookups_share_one_probe() -> None:
    directory = Directory({"user@example.org"})
    directory.hold.clear()
    server, relay = await downstream(directory)
    verifier = RecipientVerifier(relay, lambda d: True, positive_ttl=60, negative_ttl=10)
    try:
        lookups = [asyncio.create_task(verifier.lookup("user@example.org")) for _ in range(10)]
        while not directory.probes:  # wait for the one probe to arrive downstream
            await asyncio.sleep(0)
        directory.hold.set()
        replies = await asyncio.gather(*lookups)
        assert {r.code for r in replies} == {250}
        assert directory.probes == ["user@example.org"]
    finally:
        await relay.pool.close()
        server.close()


async def test_mixed_downstream_refusals_relay_nothing() -> None:
    directory = Directory({"user@example.org"})
    server, relay = await downstream(directory)
    try:
        result = await relay.send(
            parse_path("<a@sender.example>"),
            [parse_path("<user@example.org>"), parse_path("<ghost@example.org>")],
            b"Subject: x\r\n\r\nbody\r\n",
            deadline=5,
        )
        # One reply must answer for both: the client retries later rather than us owing a bounce.
        assert result.reply.code == 451
        assert [rcpt for rcpt, _ in result.refused] == ["ghost@example.org"]
        result = await relay.send(
            parse_path("<a@sender.example>"), [parse_path("<ghost@example.org>")], b"x\r\n", deadline=5
        )
        assert result.reply.code == 550 and result.reply.status == "5.1.1"
    finally:
        await relay.pool.close()
        server.close()
