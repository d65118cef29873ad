"""The milter state machine against a real Gateway (no sockets), and the never-bounce rule."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from scattergate.frontends import milter_codec as mc
from scattergate.frontends.milter import MilterConnection, for_postfix
from scattergate.model import Finding, Reply
from scattergate.pipeline import Gateway
from tests.support.gateway import running_gateway

@pytest.fixture
async def gateway(make_config, tmp_path: Path) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    (tmp_path / "rcpts").write_text("user@example.org\n")
    config = make_config(receive={"domains": ["example.org"], "recipients_file": str(tmp_path / "rcpts")})
    async with running_gateway(for_postfix(config)) as gw:
        yield gw


async def _run(conn: MilterConnection, *commands: mc.Command) -> list[mc.Response]:
    out: list[mc.Response] = []
    for command in commands:
        responses = await conn.handle(command)
        assert responses is not None
        out += responses
    return out


async def test_a_whole_transaction(gateway: Gateway) -> None:
    conn = MilterConnection(gateway)
    out = await _run(conn, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1234, "192.0.2.7"),
                     mc.Helo("client.example.net"), mc.Mail("<a@example.net>", ()))
    assert isinstance(out[0], mc.OptNegReply) and out[0].protocol & mc.P_HDR_LEADSPC
    # We decide only at RCPT and end of message: every other step is negotiated without replies.
    silent = (mc.P_NR_CONN | mc.P_NR_HELO | mc.P_NR_MAIL | mc.P_NR_DATA | mc.P_NR_HDR | mc.P_NR_EOH
              | mc.P_NR_BODY | mc.P_NR_UNKN)
    assert out[0].protocol & silent == silent and not out[0].protocol & mc.P_NR_RCPT
    assert out[1:] == []
    assert await _run(conn, mc.Rcpt("<nobody@example.org>", ())) == [
        mc.RejectReply(gateway.decider.decide([Finding("recipient", "unknown", "nobody@example.org")]).reply)]
    assert await _run(conn, mc.Rcpt("<user@example.org>", ("ORCPT=rfc822;user@example.org", "NOTIFY=FAILURE")),
                      mc.Data(), mc.Header("Subject", " hi"), mc.EndOfHeaders(), mc.Body(b"x\r\n")) == [mc.Continue()]
    end = await _run(conn, mc.EndOfMessage())
    assert end[-1] == mc.Continue()
    # Unverified sender: every recipient re-added with NOTIFY=NEVER, its ORCPT kept; delete first.
    assert end[-3:-1] == [mc.DeleteRecipient("<user@example.org>"),
                          mc.AddRecipient("<user@example.org>", ("ORCPT=rfc822;user@example.org", "NOTIFY=NEVER"))]
    assert await conn.handle(mc.Quit()) is None
    assert gateway._active_total == 0  # the connection count was released


async def test_bad_address_and_sequencing_never_crash(gateway: Gateway) -> None:
    conn = MilterConnection(gateway)
    out = await _run(conn, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Rcpt("<user@example.org>", ()),
                     mc.EndOfMessage(), mc.Mail("<not an address>", ()))
    assert out[1:] == [mc.Continue(), mc.Continue()]  # MAIL is not answered: its refusal waits
    refused = await _run(conn, mc.Rcpt("<user@example.org>", ()), mc.Rcpt("<user@example.org>", ()))
    assert [type(r) for r in refused] == [mc.RejectReply] * 2 and refused[0].reply.code == 553
    # The refusal belonged to that transaction only.
    assert await _run(conn, mc.Mail("<a@example.net>", ()), mc.Rcpt("<user@example.org>", ())) == [mc.Continue()]
    conn.close()


async def test_a_refused_connection_is_answered_at_every_rcpt_and_at_end_of_message(gateway: Gateway) -> None:
    gateway.config.server.max_connections_per_client = 1
    first, second = MilterConnection(gateway), MilterConnection(gateway)
    await _run(first, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1, "192.0.2.7"))
    out = await _run(second, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 2, "192.0.2.7"),
                     mc.Helo("h"), mc.Mail("<a@example.net>", ()), mc.Rcpt("<user@example.org>", ()),
                     mc.Mail("<a@example.net>", ()), mc.EndOfMessage())
    assert [type(r) for r in out[1:]] == [mc.TempfailReply] * 2 and out[1].reply.code == 421
    first.close()
    second.close()


async def test_an_error_at_a_silent_step_tempfails_the_next_answered_one(gateway: Gateway) -> None:
    conn = MilterConnection(gateway)
    await _run(conn, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1, "192.0.2.7"))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    gateway.mail = broken  # type: ignore[method-assign]
    assert await _run(conn, mc.Mail("<a@example.net>", ())) == []
    out = await _run(conn, mc.Rcpt("<user@example.org>", ()))
    assert out == [mc.TempfailReply(Reply(451, "4.3.0", "Internal error, try again later"))]
    conn.close()


async def test_without_addrcpt_par_there_are_no_recipient_edits(gateway: Gateway) -> None:
    conn = MilterConnection(gateway)
    out = await _run(conn, mc.OptNeg(6, mc.ACT_ADDHDRS, 0x1FFFFF), mc.Connect("c", "4", 1, "192.0.2.7"),
                     mc.Mail("<a@example.net>", ()), mc.Rcpt("<user@example.org>", ()), mc.EndOfMessage())
    assert not any(isinstance(r, (mc.DeleteRecipient, mc.AddRecipient)) for r in out)
    conn.close()


async def test_every_step_answered_when_no_reply_is_off_or_not_offered(gateway: Gateway) -> None:
    for conn, offered in ((MilterConnection(gateway, no_reply=False), 0x1FFFFF), (MilterConnection(gateway), mc.P_NOUNKNOWN | mc.P_HDR_LEADSPC)):
        out = await _run(conn, mc.OptNeg(6, 0x1FF, offered), mc.Connect("c", "4", 1, "192.0.2.7"),
                         mc.Mail("<a@example.net>", ()), mc.Data(), mc.Header("Subject", "x"), mc.EndOfHeaders())
        assert isinstance(out[0], mc.OptNegReply) and not out[0].protocol & mc.P_NR_HDR
        assert out[1:] == [mc.Continue()] * 5
        conn.close()


async def test_trusted_clients_mail_gets_a_batv_signed_sender(gateway: Gateway) -> None:
    from scattergate.frontends.milter import batv_signer
    from scattergate.rewrite import token

    conn = MilterConnection(gateway, rewrite_sender=batv_signer(gateway))
    out = await _run(conn, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Macros("M", {"{auth_authen}": "alice"}),
                     mc.Connect("c", "4", 1, "192.0.2.7"), mc.Mail("<alice@example.org>", ()),
                     mc.Rcpt("<friend@elsewhere.example>", ()), mc.Header("Message-ID", " <m1@example.org>"),
                     mc.EndOfMessage())
    changes = [r for r in out if isinstance(r, mc.ChangeSender)]
    assert len(changes) == 1 and changes[0].sender.startswith("<prvs=") and changes[0].sender.endswith("=alice@example.org>")
    # Genuine bounces for it can prove they are ours: the ID is remembered, the token carried.
    assert await gateway.registry.sent("<m1@example.org>")
    assert any(isinstance(r, mc.InsertHeader) and r.name == token.HEADER for r in out)
    # Our own user's mail keeps its bounces: no NOTIFY=NEVER.
    assert not any(isinstance(r, mc.AddRecipient) for r in out)
    conn.close()


async def test_headers_reach_the_checks_in_wire_form(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    # Postfix hands folded headers over with bare LF (or CRLF) between lines: the checks must
    # see CRLF everywhere, and a one-line header exactly as it was.
    seen: list[bytes] = []
    decide_data = gateway.decide_data

    async def spy(session, envelope, content):  # type: ignore[no-untyped-def]
        seen.append(content)
        return await decide_data(session, envelope, content)

    monkeypatch.setattr(gateway, "decide_data", spy)
    conn = MilterConnection(gateway)
    await _run(conn, mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1234, "192.0.2.7"),
               mc.Mail("<a@example.net>", ()), mc.Rcpt("<user@example.org>", ()),
               mc.Header("Subject", " one line"), mc.Header("X-Lf", " a\n\tb"), mc.Header("X-Crlf", " c\r\n\td"),
               mc.Body(b"body\r\n"), mc.EndOfMessage())
    assert seen == [b"Subject: one line\r\nX-Lf: a\r\n\tb\r\nX-Crlf: c\r\n\td\r\n\r\nbody\r\n"]
    conn.close()


TRANSACTION = (mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Macros("C", {"{daemon_name}": "smtpd"}),
               mc.Connect("c", "4", 1234, "192.0.2.7"), mc.Macros("H", {}), mc.Helo("client.example.net"),
               mc.Macros("M", {}), mc.Mail("<a@example.net>", ()), mc.Macros("R", {}),
               mc.Rcpt("<user@example.org>", ()), mc.Macros("T", {}), mc.Macros("L", {}),
               mc.Header("Subject", " hi"), mc.Macros("B", {}), mc.Body(b"x\r\n"), mc.Macros("E", {}),
               mc.EndOfMessage(), mc.Abort(), mc.Quit())


async def test_steps_that_ask_the_gateway_nothing_are_answered_without_waiting(gateway: Gateway) -> None:
    """handle_now takes macros, headers and body chunks at once; Connect, MAIL, RCPT and end of
    message are left to handle_later (they ask the Gateway)."""
    from scattergate.frontends.milter import LATER

    conn = MilterConnection(gateway)
    assert isinstance(conn.handle_now(mc.OptNeg(6, 0x1FF, 0x1FFFFF)), list)
    assert conn.handle_now(mc.Macros("C", {"{daemon_name}": "smtpd"})) == []
    assert conn.macros == {"{daemon_name}": "smtpd"}
    assert conn.handle_now(mc.Connect("c", "4", 1234, "192.0.2.7")) is LATER
    assert await conn.handle_later(mc.Connect("c", "4", 1234, "192.0.2.7")) == []
    assert conn.handle_now(mc.Rcpt("<user@example.org>", ())) is LATER
    assert conn.handle_now(mc.Header("Subject", " hi")) == []  # negotiated: no reply
    assert conn.headers == [b"Subject: hi\r\n"]
    assert conn.handle_now(mc.Quit()) is None


async def test_the_socket_loop_answers_exactly_what_handle_answers(gateway: Gateway) -> None:
    """serve_connection over a real loopback socket, the whole transaction in one write: the
    bytes it sends back are those of handle() for the same commands."""
    import asyncio

    from scattergate.frontends.milter import handler

    expected = await _run(MilterConnection(gateway), *TRANSACTION[:-1])
    server = await asyncio.start_server(handler(gateway), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(mc.encode_command(c) for c in TRANSACTION))
        answer = await asyncio.wait_for(reader.read(), 10)  # until the milter closes after Quit
        writer.close()
    finally:
        server.close()
    assert answer == b"".join(mc.encode(r) for r in expected)
    assert any(isinstance(r, mc.AddRecipient) for r in expected)  # the transaction did decide


async def test_the_socket_loop_acknowledges_at_once_only_the_reads_it_does_not_answer(
        gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read the MTA waits on is answered (the answer carries the TCP ACK); any other read is
    acknowledged at once (TCP_QUICKACK), or the MTA's next packet could wait for a delayed ACK."""
    import asyncio
    import socket

    from scattergate.frontends import milter

    options: list[tuple[int, int]] = []

    class Recording:
        def setsockopt(self, level: int, name: int, value: int) -> None:
            options.append((level, name))

        def detach(self) -> int:
            return -1

    monkeypatch.setattr(milter, "_tcp_socket", lambda writer: Recording())
    quickacks = lambda: options.count((socket.IPPROTO_TCP, socket.TCP_QUICKACK))  # noqa: E731
    server = await asyncio.start_server(milter.handler(gateway), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(mc.encode_command(mc.OptNeg(6, 0x1FF, 0x1FFFFF)))
        await asyncio.wait_for(reader.readexactly(5), 10)  # the negotiation's answer (its header)
        assert quickacks() == 0 and (socket.IPPROTO_TCP, socket.TCP_NODELAY) in options
        writer.write(mc.encode_command(mc.Macros("T", {})))
        for _ in range(1000):  # until the milter has read it
            if quickacks():
                break
            await asyncio.sleep(0.01)
        assert quickacks() == 1
        # One read from Connect to RCPT: Postfix waits only for RCPT's answer, which acknowledges.
        writer.write(b"".join(mc.encode_command(c) for c in (
            mc.Connect("client.example", "4", 40000, "192.0.2.7"), mc.Helo("client.example"),
            mc.Mail("<a@example.net>", ()), mc.Rcpt("<postmaster@example.org>", ()))))
        header = await asyncio.wait_for(reader.readexactly(5), 10)
        await asyncio.wait_for(reader.readexactly(int.from_bytes(header[:4], "big") - 1), 10)
        assert quickacks() == 1
        writer.write(mc.encode_command(mc.Quit()))
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        server.close()
