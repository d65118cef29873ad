"""A small SMTP server scripted by the test, on 127.0.0.1 in the test's own event loop.

Real sockets, a real (if tiny) server: it answers each command by a rule the test chooses,
records what it received per connection, and can hang up on an idle connection (silently
or with a 421 first) or go mute. It exists for what smtp-sink and aiosmtpd cannot do:
refuse one recipient of two *and* answer the pipelined DATA with 354, say 421 before
hanging up, or answer with a code no MTA would send.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

# The replies a well-behaved pipelining server gives; a test overrides some of them.
EHLO_PIPELINING = b"250-scripted.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_PLAIN = b"250-scripted.example\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"


@dataclass
class Session:
    """One accepted connection, as the server saw it."""

    writer: asyncio.StreamWriter
    commands: list[bytes] = field(default_factory=list)  # each command line, without CRLF
    messages: list[bytes] = field(default_factory=list)  # content as sent (dots doubled), no final dot
    unfinished: bytes | None = None  # bytes after a 354 when the client hung up before the dot
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    heard: asyncio.Event = field(default_factory=asyncio.Event)  # set at each command received
    mute: bool = False  # read and record commands, answer none

    async def wait_for_command(self, command: bytes, after: int = 0) -> None:
        """Until `command` is among the commands received from index `after` on."""
        while command not in self.commands[after:]:
            self.heard.clear()
            await self.heard.wait()

    async def hang_up(self, goodbye: bytes = b"") -> None:
        """Close the connection while it is idle (optionally saying goodbye first, as Postfix's
        "421 4.4.2 Error: timeout exceeded"), and wait until the server side is done."""
        if goodbye:
            self.writer.write(goodbye)
        self.writer.close()
        await self.ended.wait()


class ScriptedSmtp:
    """`refuse`: RCPT arguments answered 550; `refuse_mail`: MAIL arguments answered 550 (then
    RCPT and DATA get 503 until a MAIL is taken); `replies`: a fixed reply per verb (e.g.
    {b"MAIL": b"451 4.3.0 busy\\r\\n"}). After a taken MAIL, DATA is answered 354 unless
    overridden, even with no valid recipient (as some servers do when pipelining)."""

    def __init__(self, *, pipelining: bool = True, refuse: tuple[bytes, ...] = (),
                 refuse_mail: tuple[bytes, ...] = (), replies: dict[bytes, bytes] | None = None) -> None:
        self.replies = {
            b"EHLO": EHLO_PIPELINING if pipelining else EHLO_PLAIN,
            b"HELO": b"250 scripted.example\r\n",
            b"MAIL": b"250 2.1.0 Ok\r\n",
            b"RCPT": b"250 2.1.5 Ok\r\n",
            b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
            b"RSET": b"250 2.0.0 Ok\r\n",
            b"NOOP": b"250 2.0.0 Ok\r\n",
            b"QUIT": b"221 2.0.0 Bye\r\n",
            b".": b"250 2.0.0 Ok: queued as SCRIPTED\r\n",  # the reply to the content
            **(replies or {}),
        }
        self.refuse = refuse
        self.refuse_mail = refuse_mail
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def messages(self) -> list[bytes]:
        return [message for session in self.sessions for message in session.messages]

    async def __aenter__(self) -> "ScriptedSmtp":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for session in self.sessions:
            session.writer.close()
        for session in self.sessions:  # each handler ends at its EOF; let it finish
            await session.ended.wait()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(writer)
        self.sessions.append(session)
        try:
            writer.write(b"220 scripted.example ESMTP\r\n")
            in_mail = False
            while line := await reader.readline():
                command = line.rstrip(b"\r\n")
                session.commands.append(command)
                session.heard.set()
                if session.mute:
                    continue
                verb, _, argument = command.partition(b" ")
                verb = verb.upper()
                reply = self.replies.get(verb, b"502 5.5.2 Error: command not recognized\r\n")
                if verb == b"MAIL":
                    in_mail = argument not in self.refuse_mail
                    if not in_mail:
                        reply = b"550 5.7.1 Sender refused\r\n"
                elif verb in (b"RCPT", b"DATA") and not in_mail:
                    reply = b"503 5.5.1 Error: need MAIL command\r\n"
                elif verb == b"RCPT" and argument in self.refuse:
                    reply = b"550 5.1.1 <" + argument[4:-1] + b">: Recipient address rejected\r\n"
                if verb in (b"RSET", b"DATA", b"EHLO", b"HELO"):
                    in_mail = False
                writer.write(reply)
                await writer.drain()
                if verb == b"QUIT":
                    break
                if verb == b"DATA" and reply.startswith(b"354"):
                    await self._content(reader, writer, session)
        except ConnectionError:
            pass
        finally:
            writer.close()
            session.ended.set()

    async def _content(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session) -> None:
        received = b""
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):  # the client hung up before the final dot
                session.unfinished = received + line
                return
            if line == b".\r\n":
                session.messages.append(received)
                writer.write(self.replies[b"."])
                await writer.drain()
                return
            received += line

