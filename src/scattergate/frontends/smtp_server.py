"""A thin asyncio `Protocol` around the sans-IO SMTP state machine (frontends/smtp_protocol.py).

It owns what the state machine must not: the socket, the TLS upgrade (`loop.start_tls`), the
clock (deadlines) and backpressure. What a command means is the `Handler`'s business (the
gateway's, frontends/smtp.py; the audit's listener; the simulation's downstream): it is asked
at MAIL, RCPT and end of DATA and gives the reply.

Deadlines (slowloris): one TimerHandle per connection, armed lazily. Each phase only moves a
deadline (a float); the timer, when it fires, re-arms itself at the current deadline or hangs
up. A whole command line must arrive within `command_timeout` from the moment we are ready for
it (dribbling or an endless overlong line buys nothing); DATA within `data_timeout` plus one
second per `data_min_rate` bytes received; the session ends at `max_session_time`, checked
between commands only; our own work on a command (RCPT checks, end of DATA) is not the client's
time.

Backpressure: reading pauses while more than `_HIGH_WATER` octets wait unprocessed (a client
pipelining faster than the handler answers) and while the client does not read our replies.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Callable, Protocol

from scattergate.frontends import smtp_protocol as sp
from scattergate.logfmt import SessionLog
from scattergate.model import new_id

log = logging.getLogger(__name__)

_HIGH_WATER = 256 * 1024  # unprocessed octets before we stop reading
_CLOSE_GRACE = 5.0  # seconds a closing connection may take to send its last reply


@dataclass(frozen=True, slots=True)
class Timing:
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: 5 minutes per command
    data_timeout: float = 300.0
    data_min_rate: float = 1024.0  # bytes per second that buy one more second in DATA
    busy_allowance: float = 20.0  # our own time on a command (RCPT checks)
    end_of_data_allowance: float = 360.0  # our own time after the final dot, then the reply
    max_session_time: float = 3600.0


class Handler(Protocol):
    """What a server does with one connection's commands. One instance per connection."""

    session_id: str

    async def connected(self) -> str | None:
        """None to greet the client, or the reply refusing it (the connection then closes)."""

    def hello(self, event: sp.Hello) -> None: ...

    def reset(self) -> None: ...

    def tls_started(self) -> None: ...

    async def mail(self, event: sp.MailFrom) -> tuple[str, bool]:
        """(reply, accepted)"""

    async def rcpt(self, event: sp.RcptTo) -> tuple[str, bool]:
        """(reply, accepted)"""

    async def message(self, content: bytes) -> tuple[str, bool]:
        """(reply, accepted): the end of DATA."""

    def message_refused(self, outcome: sp.DataOutcome) -> str:
        """The reply to a message refused as it was read (too long a line, too big)."""

    async def authenticate(self, event: sp.Authenticate) -> tuple[str, bool, bool]:
        """(reply, accepted, close the connection after the reply)"""

    def hang_up(self, timed_out: bool, in_data: bool) -> str:
        """The 421 for a deadline (timed_out) or too many commands; the connection closes."""

    def disconnected(self) -> None: ...


class SmtpConnection(asyncio.Protocol):
    def __init__(self, settings: sp.Settings, timing: Timing, make_handler: Callable[[object], Handler],
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.machine = sp.ServerProtocol(settings)
        self.timing = timing
        self.make_handler = make_handler  # called with the peer address once connected
        self.handler: Handler
        self.tls_context = tls_context
        self.log: SessionLog
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while the client does not read
        self._reading_paused = False
        self._ended = False
        self._hung_up = False  # we said 421 and closed
        # deadlines
        self._received = 0
        self._session_end = float("inf")
        self._deadline = float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._data_start = -1.0  # loop time of DATA; < 0 outside it
        self._data_base = 0

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's too)
        self.handler = self.make_handler(transport.get_extra_info("peername"))
        self.log = SessionLog(log, self.handler.session_id)
        now = self._loop.time()
        self._session_end = now + self.timing.max_session_time
        self._arm(min(now + self.timing.command_timeout, self._session_end))
        self._task = self._loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        machine = self.machine
        machine.receive_data(data)
        if machine.buffered > _HIGH_WATER and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_up()

    def eof_received(self) -> bool:
        self.machine.receive_data(b"")
        self._wake_up()
        # We close, once the last reply is out; over TLS asyncio closes at once regardless.
        return not self.machine.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._end()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the session --------------------------------------------------------------------------

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _end(self) -> None:
        if not self._ended and hasattr(self, "handler"):
            self._ended = True
            self.handler.disconnected()

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.machine.close()
        transport.close()
        if transport.get_write_buffer_size():
            # A client that does not read would hold a closing connection open: give it a moment.
            self._loop.call_later(_CLOSE_GRACE, transport.abort)

    async def _run(self) -> None:
        try:
            refusal = await self.handler.connected()
            if refusal is not None:
                self._write(refusal.encode() + b"\r\n")
                self._close()
                return
            self._write(self.machine.greeting().encode() + b"\r\n")
            await self._serve()
        except asyncio.CancelledError:
            if self._data_start >= 0 and not self._hung_up:
                self.log.info("connection lost during DATA")
            raise
        except Exception:
            # Never a crash and never a silent accept: the client is told to try again.
            self.log.exception("unexpected error in SMTP session")
            self._write(b"451 4.3.0 Internal error, try again later\r\n")
            self._close()
        finally:
            self._end()

    async def _serve(self) -> None:
        machine, handler, loop = self.machine, self.handler, self._loop
        lines = machine.lines_read
        while True:
            event = machine.next_event()
            if event is sp.NEED_DATA or event is sp.PAUSED:
                self._write(machine.take_output())
                if machine.mode is sp.Mode.CLOSED:
                    self._close()
                    return
                if machine.lines_read != lines and self._data_start < 0:
                    # Ready for the next command line: its time starts now.
                    lines = machine.lines_read
                    self._arm(min(loop.time() + self.timing.command_timeout, self._session_end))
                if self._writable is not None:
                    await self._writable  # the client reads its replies before we read on
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
                continue
            kind = type(event)
            if kind is sp.MailFrom:
                self._busy()
                machine.answer(*await handler.mail(event))  # type: ignore[arg-type]
            elif kind is sp.RcptTo:
                self._busy()
                machine.answer(*await handler.rcpt(event))  # type: ignore[arg-type]
            elif kind is sp.Message:
                self._data_ended()
                reply, accepted = await handler.message(event.content)  # type: ignore[union-attr]
                machine.answer(reply, accepted=accepted)
            elif kind is sp.MessageRefused:
                self._data_ended()
                machine.answer(handler.message_refused(event.outcome), accepted=False)  # type: ignore[union-attr]
            elif kind is sp.DataStarted:
                now = loop.time()
                self._data_start, self._data_base = now, self._received
                self._arm(now + self.timing.data_timeout)  # the earliest the DATA deadline can be
            elif kind is sp.Hello:
                handler.hello(event)  # type: ignore[arg-type]
            elif kind is sp.Reset:
                handler.reset()
            elif kind is sp.Authenticate:
                self._busy()
                reply, accepted, close = await handler.authenticate(event)  # type: ignore[arg-type]
                machine.answer(reply, accepted=accepted)
                if close:
                    self._write(machine.take_output())
                    self._close()
                    return
            elif kind is sp.StartTls:
                self._write(machine.take_output())
                if not await self._start_tls():
                    return
                lines = -1  # a fresh command deadline
            elif kind is sp.Unrecognised:
                if not machine.auth_attempted:  # after AUTH, a line may be a secret: not a word of it
                    self.log.info("refused an unrecognised command (%d octets)", event.octets)  # type: ignore[union-attr]
            elif kind is sp.TooManyCommands:
                self._write(machine.take_output())
                self._hang_up(timed_out=False)
                return
            elif kind is sp.Quit or kind is sp.Closed:
                if kind is sp.Closed and event.in_data:  # type: ignore[union-attr]
                    self.log.info("connection closed during DATA")
                self._write(machine.take_output())
                self._close()
                return

    async def _start_tls(self) -> bool:
        transport = self.transport
        assert transport is not None and self.tls_context is not None
        try:
            upgraded = await self._loop.start_tls(transport, self, self.tls_context, server_side=True,
                                                  ssl_handshake_timeout=self.timing.command_timeout)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as error:
            # A client that fails the handshake (no common version, bad data): dropped.
            self.log.info("TLS handshake failed: %s", error)
            transport.abort()
            return False
        if upgraded is None:
            return False
        self.transport = upgraded  # type: ignore[assignment]
        self.machine.tls_started()
        self.handler.tls_started()
        return True

    # -- deadlines ---------------------------------------------------------------------------------

    def _busy(self) -> None:
        """A command is in: what follows (our checks, the reply) is not the client's time."""
        self._deadline += self.timing.busy_allowance

    def _data_ended(self) -> None:
        """The final dot is in: the end-of-DATA work is bounded, then the reply."""
        self._data_start = -1.0
        self._arm(self._loop.time() + self.timing.end_of_data_allowance)

    def _arm(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is None or deadline < self._timer_at:
            self._schedule(deadline)

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _current_deadline(self) -> float:
        if self._data_start < 0:
            return self._deadline
        rate = self.timing.data_min_rate
        extra = (self._received - self._data_base) / rate if rate else 0.0
        return self._data_start + self.timing.data_timeout + extra

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._current_deadline()
        if deadline - self._loop.time() > 0.001:
            self._schedule(deadline)  # the deadline moved on since the timer was set
            return
        self._hang_up(timed_out=True)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # whatever the client sent after this is never run

    def _hang_up(self, *, timed_out: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._hung_up = True
        reply = self.handler.hang_up(timed_out, self._data_start >= 0)
        transport.write(reply.encode() + b"\r\n")
        self._close()



class MailboxHandler:
    """A handler for our own small servers (the audit's bounce listener, the simulation's
    downstream): no AUTH, no connection policy; a subclass says which recipients it takes
    (`check_recipient`) and what becomes of a message (`take`)."""

    def __init__(self, peer: object) -> None:
        self.peer = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        self.session_id = new_id()
        self.sender = ""
        self.recipients: list[str] = []

    def check_recipient(self, address: str) -> str | None:
        """None to take mail for `address`, or the refusal."""
        return None

    def take(self, sender: str, recipients: tuple[str, ...], content: bytes) -> str:
        """The reply to a whole message (a 2xx one takes it)."""
        return "250 2.0.0 OK"

    async def connected(self) -> str | None:
        return None

    def hello(self, event: sp.Hello) -> None:
        self.reset()

    def reset(self) -> None:
        self.sender, self.recipients = "", []

    def tls_started(self) -> None:
        self.reset()

    async def mail(self, event: sp.MailFrom) -> tuple[str, bool]:
        self.sender, self.recipients = str(event.sender), []
        return "250 2.1.0 OK", True

    async def rcpt(self, event: sp.RcptTo) -> tuple[str, bool]:
        address = str(event.recipient)
        refusal = self.check_recipient(address)
        if refusal is not None:
            return refusal, False
        self.recipients.append(address)
        return "250 2.1.5 OK", True

    async def message(self, content: bytes) -> tuple[str, bool]:
        reply = self.take(self.sender, tuple(self.recipients), content)
        self.reset()
        return reply, reply.startswith("2")

    def message_refused(self, outcome: sp.DataOutcome) -> str:
        self.reset()
        return sp.MESSAGE_TOO_BIG if outcome is sp.DataOutcome.TOO_MUCH else "550 5.6.0 Message refused: line too long"

    async def authenticate(self, event: sp.Authenticate) -> tuple[str, bool, bool]:
        return sp.AUTH_FAILED, False, False  # never offered (Settings.auth_available is False)

    def hang_up(self, timed_out: bool, in_data: bool) -> str:
        return "421 4.4.2 Error: timeout exceeded" if timed_out else "421 4.7.0 Error: too many commands"

    def disconnected(self) -> None:
        pass
