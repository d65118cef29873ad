"""The relay over the pipelining client, against a scripted SMTP server on loopback
(tests/support/scripted_smtp.py): all-or-nothing in proxy mode even when the pipelined DATA
already got its 354, per recipient in spool mode, probes, and stale pooled connections."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from scattergate.address import parse_path
from scattergate.delivery.relay import DownstreamPool, DownstreamUnavailable, Outbound, Relay, RelayResult, deliver_each
from scattergate.delivery.smtp_client import encode_content
from tests.support.scripted_smtp import ScriptedSmtp

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: relay\r\n\r\n.dot line\r\nHello.\r\n"
AS_SENT = encode_content(MESSAGE)[:-3]  # what the server records: dots doubled, no final dot
GHOST = b"TO:<ghost@example.org>"
GOODBYE = b"421 4.4.2 scripted.example Error: timeout exceeded\r\n"  # as Postfix's smtpd says it


def pool_for(server: ScriptedSmtp) -> DownstreamPool:
    return DownstreamPool("127.0.0.1", server.port, size=2, timeout=5, local_hostname="mx.test.example")


@pytest.fixture
async def refusing() -> AsyncIterator[ScriptedSmtp]:
    """Pipelining; refuses ghost@ but answers the pipelined DATA with 354 all the same."""
    async with ScriptedSmtp(refuse=(GHOST,)) as server:
        yield server


async def send(relay: Relay, *recipients: str) -> RelayResult:
    return await relay.send(parse_path("<a@sender.example>"), [parse_path(f"<{r}>") for r in recipients],
                            MESSAGE, deadline=5)


async def test_proxy_one_refused_recipient_relays_nothing_and_closes_after_354(refusing: ScriptedSmtp) -> None:
    relay = Relay(pool_for(refusing))
    try:
        result = await send(relay, "user@example.org", "ghost@example.org")
        # All or nothing: the accepted recipient must not get it (we could not bounce for ghost).
        assert (result.reply.code, result.reply.status) == (451, "4.5.3")
        assert [(rcpt, reply.code) for rcpt, reply in result.refused] == [("ghost@example.org", 550)]
        (session,) = refusing.sessions
        assert session.commands[-1] == b"DATA"  # pipelined: DATA went out, and got 354
        await asyncio.wait_for(session.ended.wait(), 5)
        # The only way to cancel after 354: hang up. No content, no final dot, no RSET.
        assert session.messages == [] and session.unfinished == b""
        # That connection is not reused: the next message opens a new one.
        assert (await send(relay, "user@example.org")).reply.code == 250
        assert len(refusing.sessions) == 2 and refusing.sessions[1].messages == [AS_SENT]
    finally:
        await relay.pool.close()


async def test_proxy_every_recipient_refused_is_the_downstreams_5xx_and_nothing_relayed(refusing: ScriptedSmtp) -> None:
    refusing.refuse = (GHOST, b"TO:<nobody@example.org>")
    relay = Relay(pool_for(refusing))
    try:
        result = await send(relay, "ghost@example.org", "nobody@example.org")
        assert (result.reply.code, result.reply.status) == (550, "5.1.1")
        await asyncio.wait_for(refusing.sessions[0].ended.wait(), 5)
        assert refusing.messages == [] and refusing.sessions[0].unfinished == b""
    finally:
        await relay.pool.close()


async def test_proxy_refused_recipient_without_pipelining_sends_no_data_and_keeps_the_connection() -> None:
    # One command at a time, the relay sees the refusal before DATA: it never sends DATA (so
    # there is no 354 to cancel), resets, and the connection serves the next message.
    async with ScriptedSmtp(pipelining=False, refuse=(GHOST,)) as server:
        relay = Relay(pool_for(server))
        try:
            assert (await send(relay, "user@example.org", "ghost@example.org")).reply.code == 451
            (session,) = server.sessions
            assert b"DATA" not in session.commands and session.commands[-1] == b"RSET"
            assert server.messages == []
            assert (await send(relay, "user@example.org")).reply.code == 250
            assert len(server.sessions) == 1 and server.messages == [AS_SENT]
        finally:
            await relay.pool.close()


async def test_proxy_refused_mail_without_pipelining_keeps_the_connection() -> None:
    # Nothing followed the refused MAIL: RSET is enough, and the connection is reused.
    async with ScriptedSmtp(pipelining=False, refuse_mail=(b"FROM:<a@sender.example>",)) as server:
        relay = Relay(pool_for(server))
        try:
            assert (await send(relay, "user@example.org")).reply.code == 550
            assert server.sessions[0].commands[-2:] == [b"MAIL FROM:<a@sender.example>", b"RSET"]
            server.refuse_mail = ()
            assert (await send(relay, "user@example.org")).reply.code == 250
            assert len(server.sessions) == 1 and server.messages == [AS_SENT]
        finally:
            await relay.pool.close()


async def test_spool_accepted_recipient_gets_it_refused_one_keeps_its_reply(refusing: ScriptedSmtp) -> None:
    pool = pool_for(refusing)
    try:
        replies = await deliver_each(pool, "a@sender.example",
                                     [Outbound("user@example.org"), Outbound("ghost@example.org")],
                                     MESSAGE, deadline=5)
        assert replies["user@example.org"].code == 250
        assert (replies["ghost@example.org"].code, replies["ghost@example.org"].status) == (550, "5.1.1")
        assert refusing.messages == [AS_SENT]
        # The transaction completed normally: the connection serves the next delivery.
        replies = await deliver_each(pool, "a@sender.example", [Outbound("user@example.org")], MESSAGE, deadline=5)
        assert replies["user@example.org"].code == 250 and len(refusing.sessions) == 1
    finally:
        await pool.close()


async def test_spool_every_recipient_refused_closes_after_354_and_sends_nothing(refusing: ScriptedSmtp) -> None:
    pool = pool_for(refusing)
    try:
        replies = await deliver_each(pool, "a@sender.example", [Outbound("ghost@example.org")], MESSAGE, deadline=5)
        assert replies["ghost@example.org"].code == 550
        await asyncio.wait_for(refusing.sessions[0].ended.wait(), 5)
        assert refusing.messages == [] and refusing.sessions[0].unfinished == b""
    finally:
        await pool.close()


async def test_probe_returns_the_rcpt_reply_and_reuses_the_connection(refusing: ScriptedSmtp) -> None:
    relay = Relay(pool_for(refusing))
    try:
        ghost = await relay.probe(parse_path("<ghost@example.org>"))
        user = await relay.probe(parse_path("<user@example.org>"))
        assert (ghost.code, ghost.status) == (550, "5.1.1") and user.code == 250
        (session,) = refusing.sessions  # one connection for both probes
        assert session.commands[1:] == [b"MAIL FROM:<>", GHOST.replace(b"TO:", b"RCPT TO:"), b"RSET",
                                        b"MAIL FROM:<>", b"RCPT TO:<user@example.org>", b"RSET"]
        assert refusing.messages == []
    finally:
        await relay.pool.close()


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("goodbye", [b"", GOODBYE], ids=["silent", "421"])
async def test_stale_pooled_connection_is_replaced_without_duplicating(pipelining: bool, goodbye: bytes) -> None:
    async with ScriptedSmtp(pipelining=pipelining) as server:
        relay = Relay(pool_for(server))
        try:
            assert (await send(relay, "user@example.org")).reply.code == 250
            # The downstream drops the idle pooled connection (its idle timeout).
            await server.sessions[0].hang_up(goodbye)
            result = await send(relay, "user@example.org")
            assert result.reply.code == 250, result
            # One copy per message: one on the old connection, one on the new.
            assert [len(s.messages) for s in server.sessions] == [1, 1]
        finally:
            await relay.pool.close()


async def one_message(relay: Relay, mode: str) -> int:
    """One message to user@example.org, before the queue (proxy) or from the spool: the reply code."""
    if mode == "proxy":
        return (await send(relay, "user@example.org")).reply.code
    replies = await deliver_each(relay.pool, "a@sender.example", [Outbound("user@example.org")], MESSAGE, deadline=5)
    return replies["user@example.org"].code


@pytest.mark.parametrize("mode", ["proxy", "spool"])
@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_connection_dropped_when_mail_arrives_is_retried_on_a_fresh_one(mode: str, pipelining: bool) -> None:
    # The race the idle check cannot see: the downstream hangs up just as our MAIL arrives (an
    # idle timeout racing us). Both modes retry on a fresh connection: for the spool that is a
    # delivery now rather than a deferral of minutes. The message arrives exactly once.
    async with ScriptedSmtp(pipelining=pipelining) as server:
        relay = Relay(pool_for(server))
        try:
            assert await one_message(relay, mode) == 250
            first = server.sessions[0]
            first.mute = True
            seen = len(first.commands)

            async def hang_up_at_mail() -> None:
                await first.wait_for_command(b"MAIL FROM:<a@sender.example>", seen)
                await first.hang_up()

            hanging = asyncio.create_task(hang_up_at_mail())
            code = await one_message(relay, mode)
            await hanging
            assert code == 250
            assert [len(s.messages) for s in server.sessions] == [1, 1]
        finally:
            await relay.pool.close()


async def test_an_idle_connection_that_said_goodbye_is_not_reused() -> None:
    # A 421 sent before the hang-up sits unread in the idle connection's buffer: the pool must
    # see that it is finished and open a fresh one, not send MAIL into it.
    async with ScriptedSmtp(pipelining=True) as server:
        pool = pool_for(server)
        try:
            recipients = [Outbound("user@example.org")]
            await deliver_each(pool, "a@sender.example", recipients, MESSAGE, deadline=5)
            await server.sessions[0].hang_up(GOODBYE)
            client, reused = await pool.acquire()
            pool.release(client, reusable=True)
            assert not reused
            replies = await deliver_each(pool, "a@sender.example", recipients, MESSAGE, deadline=5)
            assert replies["user@example.org"].code == 250
            assert [len(s.messages) for s in server.sessions] == [1, 1]
        finally:
            await pool.close()


@pytest.mark.parametrize("stage", [b"MAIL", b"RCPT", b"DATA", b"."])
@pytest.mark.parametrize("code", [b"600", b"199", b"000"])
async def test_a_reply_code_outside_2xx_to_5xx_is_a_tempfail_not_an_exception(stage: bytes, code: bytes) -> None:
    # A downstream that does not speak SMTP must give a 4xx (the client retries), never an
    # exception out of the relay (a spooled message would never reach its give-up time).
    async with ScriptedSmtp(replies={stage: code + b" odd\r\n"}) as server:
        relay = Relay(pool_for(server))
        try:
            assert (await send(relay, "user@example.org")).reply.code == 451
            replies = await deliver_each(relay.pool, "a@sender.example", [Outbound("user@example.org")],
                                         MESSAGE, deadline=5)
            assert replies["user@example.org"].code == 451
            if stage in (b"MAIL", b"RCPT"):
                with pytest.raises(DownstreamUnavailable):  # what recipient verification handles
                    await relay.probe(parse_path("<user@example.org>"))
        finally:
            await relay.pool.close()
