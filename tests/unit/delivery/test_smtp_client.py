"""The downstream SMTP client (delivery/smtp_client.py) against real servers on loopback:
Postfix's smtp-sink (pipelining), aiosmtpd (no pipelining) and small servers scripted here
for the replies a real MTA will not give on demand. No mock of the client anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiosmtpd.smtp import SMTP

from scattergate.delivery.smtp_client import SmtpClientError, SmtpConnection, encode_content
from tests.conftest import require_binary
from tests.support.scripted_smtp import ScriptedSmtp
from tests.support.sink import SmtpSink
from tests.support.tls import Pki, client_context, make_pki, server_context

MESSAGE = b"From: a@sender.example\r\nTo: one@example.org\r\nSubject: pipelined\r\n\r\nHello.\r\n"
RCPTS = [b"TO:<one@example.org>", b"TO:<two@example.org>"]


async def connect(port: int, timeout: float = 5) -> SmtpConnection:
    return await SmtpConnection.open("127.0.0.1", port, timeout=timeout, local_hostname="mx.test.example")


def count_writes(connection: SmtpConnection, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record each write the client makes on this one connection (the socket still gets it)."""
    writes: list[bytes] = []
    write = connection._writer.write

    def recording(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    monkeypatch.setattr(connection._writer, "write", recording)
    return writes


# --- Postfix's smtp-sink: pipelining -------------------------------------------------------


async def test_pipelined_envelope_leaves_in_one_write_and_the_message_arrives(
    smtp_sink: Callable[..., SmtpSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = smtp_sink()
    connection = await connect(sink.port)
    try:
        assert connection.supports("PIPELINING")  # smtp-sink advertises it by default
        writes = count_writes(connection, monkeypatch)
        envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
        # MAIL, both RCPTs and DATA in a single write: one round trip for the envelope.
        assert writes == [b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<one@example.org>\r\n"
                          b"RCPT TO:<two@example.org>\r\nDATA\r\n"]
        assert envelope.mail.ok and [r.code if r else None for r in envelope.rcpts] == [250, 250]
        assert envelope.data is not None and envelope.data.code == 354
        assert (await connection.content(encode_content(MESSAGE))).code == 250
        await connection.quit()
    finally:
        connection.close()
    (dump,) = sink.messages()
    assert b"X-Mail-Args: <a@sender.example>\nX-Rcpt-Args: <one@example.org>\nX-Rcpt-Args: <two@example.org>\n" in dump
    assert MESSAGE.replace(b"\r\n", b"\n") in dump  # smtp-sink stores LF line ends


async def test_two_pipelined_transactions_on_one_connection(smtp_sink: Callable[..., SmtpSink]) -> None:
    # The replies of the first group are all consumed: the second one starts in sync.
    sink = smtp_sink()
    connection = await connect(sink.port)
    try:
        for n in (1, 2):
            envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS[:1], data=True)
            assert envelope.data is not None and envelope.data.code == 354
            reply = await connection.content(encode_content(b"Subject: %d\r\n\r\nbody\r\n" % n))
            assert reply.code == 250
    finally:
        connection.close()
    dumps = sink.messages()
    assert sorted(b"Subject: 1" in d for d in dumps) == [False, True]


# --- aiosmtpd: no PIPELINING, one command at a time ----------------------------------------


@dataclass
class Downstream:
    """What an aiosmtpd downstream received; refuses the senders/recipients it is told to."""

    refuse_mail: set[str] = field(default_factory=set)
    refuse_rcpt: set[str] = field(default_factory=set)
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)
    port: int = 0

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse_mail:
            return "550 5.7.1 sender refused"
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse_rcpt:
            return "550 5.1.1 unknown user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued"


@pytest.fixture
async def aiosmtpd() -> AsyncIterator[Downstream]:
    downstream = Downstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(downstream, hostname="down.example"), "127.0.0.1", 0)
    downstream.port = server.sockets[0].getsockname()[1]
    yield downstream
    server.close()


async def test_sequential_path_one_command_per_write(aiosmtpd: Downstream, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = await connect(aiosmtpd.port)
    try:
        assert not connection.supports("pipelining")
        writes = count_writes(connection, monkeypatch)
        envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
        assert writes == [b"MAIL FROM:<a@sender.example>\r\n", b"RCPT TO:<one@example.org>\r\n",
                          b"RCPT TO:<two@example.org>\r\n", b"DATA\r\n"]
        assert envelope.data is not None and envelope.data.code == 354
        assert (await connection.content(encode_content(MESSAGE))).code == 250
    finally:
        connection.close()
    assert aiosmtpd.messages == [(["one@example.org", "two@example.org"], MESSAGE)]


async def test_sequential_nothing_after_a_refused_mail(aiosmtpd: Downstream, monkeypatch: pytest.MonkeyPatch) -> None:
    aiosmtpd.refuse_mail.add("bad@sender.example")
    connection = await connect(aiosmtpd.port)
    try:
        writes = count_writes(connection, monkeypatch)
        envelope = await connection.envelope(b"FROM:<bad@sender.example>", RCPTS, data=True)
        assert envelope.mail.code == 550 and envelope.rcpts == [None, None] and envelope.data is None
        assert writes == [b"MAIL FROM:<bad@sender.example>\r\n"]
    finally:
        connection.close()


async def test_sequential_no_data_without_an_accepted_recipient(aiosmtpd: Downstream, monkeypatch: pytest.MonkeyPatch) -> None:
    aiosmtpd.refuse_rcpt.update({"one@example.org", "two@example.org"})
    connection = await connect(aiosmtpd.port)
    try:
        writes = count_writes(connection, monkeypatch)
        envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
        assert [r.code if r else None for r in envelope.rcpts] == [550, 550] and envelope.data is None
        assert b"DATA\r\n" not in writes
        await connection.rset()
        assert connection.is_connected  # RSET taken: the connection can serve the next message
    finally:
        connection.close()


async def test_sequential_data_when_one_recipient_of_two_is_accepted(aiosmtpd: Downstream) -> None:
    aiosmtpd.refuse_rcpt.add("two@example.org")
    connection = await connect(aiosmtpd.port)
    try:
        envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
        assert [r.code if r else None for r in envelope.rcpts] == [250, 550]
        assert envelope.data is not None and envelope.data.code == 354
        assert (await connection.content(encode_content(MESSAGE))).code == 250
    finally:
        connection.close()
    assert aiosmtpd.messages == [(["one@example.org"], MESSAGE)]


@pytest.mark.parametrize(("content", "arrives"), [
    (b"bare\nLF\nonly\n", b"bare\r\nLF\r\nonly\r\n"),
    (b"bare\rCR\r", b"bare\r\nCR\r\n"),
    (b"mixed\r\nthen\nthen\r", b"mixed\r\nthen\r\nthen\r\n"),
    # A bare-LF "." line must not end the message early: normalised, then dot-stuffed.
    (b"before\n.\nafter\n", b"before\r\n.\r\nafter\r\n"),
    (b".starts with a dot\r\n..two dots\r\n.\r\nlast\r\n", b".starts with a dot\r\n..two dots\r\n.\r\nlast\r\n"),
    (b"no final line ending", b"no final line ending\r\n"),
    (b".", b".\r\n"),
    (b"", b""),
])
async def test_content_round_trip(aiosmtpd: Downstream, content: bytes, arrives: bytes) -> None:
    # aiosmtpd keeps line endings as received and undoes dot-stuffing (RFC 5321 §4.5.2).
    connection = await connect(aiosmtpd.port)
    try:
        envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS[:1], data=True)
        assert envelope.data is not None and envelope.data.code == 354
        assert (await connection.content(encode_content(content))).code == 250
    finally:
        connection.close()
    assert aiosmtpd.messages == [(["one@example.org"], arrives)]


def test_encode_content_doubles_leading_dots_and_ends_with_the_final_dot() -> None:
    assert encode_content(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert encode_content(b"") == b".\r\n"


# --- scripted servers: replies a real MTA will not give on demand ---------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
EHLO_OK = b"250-scripted.example\r\n250 8BITMIME\r\n"


@dataclass
class Raw:
    port: int
    lines: list[bytes]  # every line the server read (what the client sent)
    done: asyncio.Event  # the script finished (e.g. it saw the client hang up)


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[Raw]:
    """A server that runs `script` on each connection, recording the lines the client sent."""
    lines: list[bytes] = []
    done = asyncio.Event()
    connections: list[tuple[asyncio.Task[Any], asyncio.StreamWriter]] = []

    class Recording(asyncio.StreamReader):
        async def readline(self) -> bytes:
            line = await super().readline()
            lines.append(line)
            return line

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reader.__class__ = Recording
        task = asyncio.current_task()
        assert task is not None
        connections.append((task, writer))
        try:
            await script(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield Raw(server.sockets[0].getsockname()[1], lines, done)
    finally:
        server.close()
        for task, writer in connections:  # end every script (EOF), and wait for it
            writer.close()
        await asyncio.gather(*(task for task, _ in connections), return_exceptions=True)


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ehlo: bytes = EHLO_OK) -> None:
    writer.write(b"220 scripted.example ESMTP\r\n")
    await reader.readline()
    writer.write(ehlo)


async def until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.readline():
        pass


def answering(reply: bytes) -> Script:
    """Greet, then answer the first command after EHLO with `reply`, then wait for the client to go."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await reader.readline()
        writer.write(reply)
        await until_eof(reader)
    return script


async def test_multiline_ehlo_extensions_are_parsed() -> None:
    ehlo = (b"250-scripted.example greets mx.test.example\r\n250-SIZE 1000\r\n250-PIPELINING\r\n"
            b"250-Auth PLAIN LOGIN\r\n250 8bitmime\r\n")

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, ehlo)
        await until_eof(reader)

    async with raw_server(script) as server:
        connection = await connect(server.port)
        connection.close()
    assert connection.extensions == {"size": "1000", "pipelining": "", "auth": "PLAIN LOGIN", "8bitmime": ""}
    assert connection.supports("Size") and not connection.supports("dsn")
    assert server.lines[0] == b"EHLO mx.test.example\r\n"


@pytest.mark.parametrize(("reply", "code", "message"), [
    (b"250\r\n", 250, ""),  # a code with no text at all
    (b"250 \r\n", 250, ""),
    (b"250-first\r\n250-second\r\n250 third\r\n", 250, "first\nsecond\nthird"),
    (b"451 4.3.0 busy\r\n", 451, "4.3.0 busy"),
    (b"250 caf\xc3\xa9 \xff\r\n", 250, "caf\u00e9 \ufffd"),  # not UTF-8: replaced, not a crash
])
async def test_replies_are_parsed(reply: bytes, code: int, message: str) -> None:
    async with raw_server(answering(reply)) as server:
        connection = await connect(server.port)
        try:
            response = await connection.command(b"NOOP")
        finally:
            connection.close()
    assert (response.code, response.message) == (code, message)


@pytest.mark.parametrize("reply", [
    b"hello there\r\n",
    b"25x ok\r\n",
    b"2500 ok\r\n",
    b"\r\n",
    b"25\r\n",
    b"250-one\r\n251 two\r\n",  # the code changes inside one reply
    b"250_ok\r\n",
    b"600 not a reply class\r\n",  # no such SMTP reply: 2yz to 5yz only (RFC 5321 §4.2.1)
    b"199 preliminary\r\n",
    b"000 zero\r\n",
])
async def test_a_garbage_reply_is_an_error_and_closes_the_connection(reply: bytes) -> None:
    async with raw_server(answering(reply)) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpClientError, match="not an SMTP reply"):
            await connection.command(b"NOOP")
        assert not connection.is_connected
        await asyncio.wait_for(server.done.wait(), 5)  # the server saw the client hang up


@pytest.mark.parametrize("partial", [b"250-first line\r\n", b"250 no line end", b""])
async def test_the_server_closing_mid_reply_is_an_error(partial: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await reader.readline()
        writer.write(partial)  # and close (raw_server closes after the script)

    async with raw_server(script) as server:
        connection = await connect(server.port)
        with pytest.raises(SmtpClientError, match="closed the connection"):
            await connection.command(b"NOOP")
        assert not connection.is_connected


async def test_an_endless_reply_line_is_an_error_not_a_memory_sink() -> None:
    # The server streams one line with no end (up to 64 MB). A bounded reader gives up after
    # its line limit; an unbounded one would take it all and then time out instead.
    sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await greet(reader, writer)
        await reader.readline()
        writer.write(b"250-")
        for _ in range(4096):
            writer.write(b"x" * 16384)
            await writer.drain()  # raises once the client has closed
            sent += 16384

    async with raw_server(script) as server:
        connection = await connect(server.port, timeout=10)
        with pytest.raises(SmtpClientError) as caught:
            await connection.command(b"NOOP")
        assert "in time" not in str(caught.value)
        assert not connection.is_connected
        await asyncio.wait_for(server.done.wait(), 10)
    assert sent < 4096 * 16384  # the server could not push it all: the client stopped reading


async def test_a_line_just_under_the_limit_is_read() -> None:
    text = b"y" * 8000
    async with raw_server(answering(b"250 " + text + b"\r\n")) as server:
        connection = await connect(server.port)
        try:
            assert (await connection.command(b"NOOP")).message == text.decode()
        finally:
            connection.close()


@pytest.mark.parametrize(("lines", "accepted"), [(100, True), (101, False), (10_000, False)])
async def test_a_reply_of_too_many_lines_is_an_error(lines: int, accepted: bool) -> None:
    reply = b"250-line\r\n" * (lines - 1) + b"250 last\r\n"
    async with raw_server(answering(reply)) as server:
        connection = await connect(server.port)
        try:
            if accepted:
                assert (await connection.command(b"NOOP")).message.count("\n") == lines - 1
            else:
                with pytest.raises(SmtpClientError, match="too many lines"):
                    await connection.command(b"NOOP")
                assert not connection.is_connected
        finally:
            connection.close()


async def test_a_server_that_never_answers_times_out_and_is_closed() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await until_eof(reader)  # reads NOOP, never answers; ends when the client hangs up

    async with raw_server(script) as server:
        connection = await connect(server.port, timeout=0.3)
        with pytest.raises(SmtpClientError, match="did not answer in time"):
            await connection.command(b"NOOP")
        assert not connection.is_connected  # a late reply must never be read as the next one's
        await asyncio.wait_for(server.done.wait(), 5)


@pytest.mark.parametrize("outer", [30.0, 0.3])
async def test_the_own_timeout_fires_unless_the_callers_deadline_comes_first(outer: float) -> None:
    """With a later caller deadline the exchange's own timeout still ends it (and closes the
    connection); with a caller deadline no later than ours (no timer of ours is armed), the
    caller's timeout ends it, as it would have anyway."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        await until_eof(reader)

    async with raw_server(script) as server:
        connection = await connect(server.port, timeout=0.5)
        expected = SmtpClientError if outer > 0.5 else TimeoutError
        try:
            with pytest.raises(expected):
                async with asyncio.timeout(outer) as scope:
                    connection.outer_deadline = scope.when()
                    await connection.command(b"NOOP")
            if expected is SmtpClientError:
                assert not connection.is_connected  # a late reply must never be read as the next one's
        finally:
            connection.close()
        await asyncio.wait_for(server.done.wait(), 5)


async def test_a_server_that_never_greets_times_out_in_open() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await until_eof(reader)

    async with raw_server(silent) as server:
        with pytest.raises(SmtpClientError, match="did not answer in time"):
            await connect(server.port, timeout=0.3)
        await asyncio.wait_for(server.done.wait(), 5)  # and the socket was closed


@pytest.mark.parametrize("greeting", [b"554 5.7.1 go away\r\n", b"421 4.3.2 shutting down\r\n", b"220-multi\r\n554 no\r\n"])
async def test_a_greeting_other_than_220_fails_open(greeting: bytes) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await until_eof(reader)

    async with raw_server(script) as server:
        with pytest.raises(SmtpClientError):
            await connect(server.port)
        await asyncio.wait_for(server.done.wait(), 5)
    assert server.lines == [b""]  # no EHLO was sent, and the client hung up


async def test_ehlo_refused_falls_back_to_helo_without_extensions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, b"502 5.5.2 EHLO not implemented\r\n")
        await reader.readline()  # HELO
        writer.write(b"250 scripted.example\r\n")
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await reader.readline()
            writer.write(reply)
        await until_eof(reader)

    async with raw_server(script) as server:
        connection = await connect(server.port)
        try:
            assert connection.extensions == {} and not connection.supports("pipelining")
            writes = count_writes(connection, monkeypatch)
            envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS[:1], data=True)
            assert envelope.data is not None and envelope.data.code == 354
            assert len(writes) == 3  # without EHLO, no pipelining
        finally:
            connection.close()
    assert server.lines[:2] == [b"EHLO mx.test.example\r\n", b"HELO mx.test.example\r\n"]


async def test_helo_refused_too_fails_open() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, b"502 5.5.2 no EHLO\r\n")
        await reader.readline()
        writer.write(b"550 5.7.1 no HELO either\r\n")
        await until_eof(reader)

    async with raw_server(script) as server:
        with pytest.raises(SmtpClientError, match="HELO refused"):
            await connect(server.port)


@pytest.mark.parametrize("argument", [b"x\r\nRSET", b"x\nRSET", b"x\rRSET"])
async def test_a_command_with_a_line_break_is_refused_before_sending(argument: bytes) -> None:
    async with raw_server(answering(b"250 ok\r\n")) as server:
        connection = await connect(server.port)
        try:
            with pytest.raises(SmtpClientError, match="line break"):
                await connection.command(b"NOOP", argument)
            with pytest.raises(SmtpClientError, match="line break"):
                await connection.envelope(b"FROM:<a@sender.example>", [b"TO:<" + argument + b">"], data=True)
            # Nothing of either was sent, and the connection is still in sync.
            assert (await connection.command(b"NOOP")).code == 250
        finally:
            connection.close()
    assert server.lines[1] == b"NOOP\r\n"


async def test_pipelined_replies_in_one_segment_are_each_read() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, b"250-scripted.example\r\n250 PIPELINING\r\n")
        for _ in range(4):  # MAIL, RCPT, RCPT, DATA
            await reader.readline()
        writer.write(b"250 2.1.0 sender ok\r\n250 2.1.5 one ok\r\n550-5.1.1 two\r\n550 5.1.1 unknown\r\n"
                     b"354 go ahead\r\n")  # all four replies in one write
        await until_eof(reader)

    async with raw_server(script) as server:
        connection = await connect(server.port)
        try:
            envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
        finally:
            connection.close()
    assert (envelope.mail.code, envelope.mail.message) == (250, "2.1.0 sender ok")
    assert [(r.code, r.message) if r else None for r in envelope.rcpts] == [
        (250, "2.1.5 one ok"), (550, "5.1.1 two\n5.1.1 unknown")]
    assert envelope.data is not None and (envelope.data.code, envelope.data.message) == (354, "go ahead")


async def test_pipelined_refused_mail_consumes_every_reply_and_stays_in_sync() -> None:
    # MAIL refused: the server answers the pipelined RCPT and DATA with 503. Those replies
    # must be read now, or the next transaction would take them for its own.
    async with ScriptedSmtp(refuse_mail=(b"FROM:<bad@sender.example>",)) as server:
        connection = await connect(server.port)
        try:
            envelope = await connection.envelope(b"FROM:<bad@sender.example>", RCPTS, data=True)
            assert envelope.mail.code == 550
            assert [r.code if r else None for r in envelope.rcpts] == [503, 503]
            assert envelope.data is not None and envelope.data.code == 503
            await connection.rset()
            envelope = await connection.envelope(b"FROM:<a@sender.example>", RCPTS, data=True)
            assert envelope.mail.code == 250 and envelope.data is not None and envelope.data.code == 354
            assert (await connection.content(encode_content(MESSAGE))).code == 250
        finally:
            connection.close()
        assert server.messages == [MESSAGE] and len(server.sessions) == 1


async def test_is_connected_turns_false_when_the_server_hangs_up() -> None:
    async with ScriptedSmtp() as server:
        connection = await connect(server.port)
        assert connection.is_connected
        await server.sessions[0].hang_up()
        # The client learns of the FIN when its loop reads the socket: let it run, no timer.
        for _ in range(1000):
            if not connection.is_connected:
                break
            await asyncio.sleep(0)
        assert not connection.is_connected
        connection.close()


# --- STARTTLS (a real handshake with a test CA) --------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(require_binary("openssl"), tmp_path_factory.mktemp("pki"))


def starttls_server(pki: Pki, after_220: bytes = b"") -> Script:
    """Offers STARTTLS, says 220 (followed by `after_220` in the same write, still in clear),
    does the handshake, then offers PIPELINING and answers one NOOP."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer, b"250-scripted.example\r\n250 STARTTLS\r\n")
        await reader.readline()  # STARTTLS
        writer.write(b"220 2.0.0 Ready to start TLS\r\n" + after_220)
        await writer.drain()
        plain = writer.transport
        try:
            await writer.start_tls(server_context(pki.cert, pki.key))
        except AttributeError:  # CPython 3.11 when the client hung up before the handshake:
            writer._transport = plain  # type: ignore[attr-defined]  # no transport left, and __del__ would raise
            return
        await reader.readline()  # EHLO again, now encrypted
        writer.write(b"250-scripted.example\r\n250 PIPELINING\r\n")
        await reader.readline()  # NOOP
        writer.write(b"250 2.0.0 the real NOOP reply\r\n")
        await until_eof(reader)
    return script


async def test_starttls_handshakes_and_forgets_what_was_said_before(pki: Pki) -> None:
    async with raw_server(starttls_server(pki)) as server:
        connection = await connect(server.port)
        try:
            assert connection.supports("starttls") and not connection.supports("pipelining")
            await connection.starttls(client_context(pki.ca), "downstream.test.example")
            # RFC 3207: EHLO again over TLS, and only its extensions count now.
            assert connection.extensions == {"pipelining": ""}
            assert (await connection.command(b"NOOP")).message == "2.0.0 the real NOOP reply"
        finally:
            connection.close()
    assert server.lines[:3] == [b"EHLO mx.test.example\r\n", b"STARTTLS\r\n", b"EHLO mx.test.example\r\n"]


async def test_starttls_refused_is_an_error() -> None:
    async with raw_server(answering(b"454 4.7.0 TLS not available\r\n")) as server:
        connection = await connect(server.port)
        try:
            with pytest.raises(SmtpClientError, match="STARTTLS refused"):
                await connection.starttls(ssl.create_default_context(), "downstream.test.example")
        finally:
            connection.close()


async def test_clear_text_injected_after_the_starttls_220_is_never_read_as_a_reply(pki: Pki) -> None:
    # A man in the middle appends replies to the clear-text 220; read after the handshake they
    # would pass for the server's own (RFC 3207 §4.2, "STARTTLS response injection"), shifting
    # every reply by one: e.g. a forged 250 for the message the server refused.
    async with raw_server(starttls_server(pki, after_220=b"250 injected\r\n")) as server:
        connection = await connect(server.port)
        try:
            with pytest.raises(SmtpClientError, match="after its 220"):
                await connection.starttls(client_context(pki.ca), "downstream.test.example")
            assert not connection.is_connected
        finally:
            connection.close()
