"""The SMTP front end: aiosmtpd on the wire, the Gateway pipeline behind it.

aiosmtpd handles the protocol (command parsing and sequencing, SIZE, STARTTLS, AUTH); this
module adds what a gateway needs on top, without copying its internals:
- strict CRLF on command lines (a bare CR or LF is refused, so no smuggling ambiguity);
- our own RFC 5321 path parser, so relay tricks are seen rather than normalised away;
- connection limits before the banner;
- every MAIL/RCPT/DATA answer taken from the verdict of the decision layer;
- deadlines for a whole command line, for the whole of DATA (with a minimum rate) and for
  the session, and a cap on commands between deliveries (slowloris: 421 4.4.2 / 4.7.0);
- NUL, invalid UTF-8 and non-ASCII addresses without SMTPUTF8 refused on the command line,
  and aiosmtpd's own replies given RFC 3463 enhanced codes without echoing client bytes;
- STARTTLS (aiosmtpd's, with our context) and AUTH PLAIN/LOGIN only over TLS, checked off
  the event loop, with the connection closed after too many failures;
- the DATA content read in blocks of lines (frontends/smtp_data.py: the line and size limits
  and dot-unstuffing), where aiosmtpd awaits once per line.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from typing import Any, NoReturn

from aiosmtpd.smtp import SMTP, AuthResult, Envelope as AioEnvelope, LoginPassword, Session as AioSession
from aiosmtpd.smtp import TLSSetupException

from scattergate.address import Address, AddressError, parse_path
from scattergate.frontends.smtp_data import DataAccumulator, DataOutcome, read_data
from scattergate.model import Accept, Finding, Phase, Quarantine, RcptDsn, Reject, Reply, Session, Tempfail
from scattergate.pipeline import MAIL_OK, Gateway

log = logging.getLogger(__name__)

# Command name our reader substitutes for a line with a bare CR or LF. aiosmtpd upper-cases
# and ASCII-decodes the command word, so a client typing it gets the same refusal: harmless.
_BARE_LINE_COMMAND = "\x00BARE"
BARE_LINE_REPLY = "500 5.5.2 Syntax error: bare CR or LF in command line refused"
# aiosmtpd's refusal under require_starttls lacks the RFC 3207 enhanced status code.
_AIOSMTPD_NEED_TLS = "530 Must issue a STARTTLS command first"
NEED_TLS_REPLY = "530 5.7.0 Must issue a STARTTLS command first"
NO_AUTH_REPLY = "502 5.5.1 AUTH not available"
AUTH_LOCKOUT_REPLY = "421 4.7.0 Too many failed authentication attempts, closing connection"
AUTH_LOCKED_OUT_REPLY = "454 4.7.0 Too many failed authentication attempts from your address, try again later"

# Command name our reader substitutes for a command line it refuses itself (NUL, bad UTF-8,
# a non-ASCII address without SMTPUTF8); the reply waits in GatewaySMTP._sg_refusal.
_SCREENED_COMMAND = "\x00REFUSE"
NUL_REPLY = "500 5.5.2 Syntax error: NUL character in command line"
# RFC 6531 §3.5 (and RFC 6533 for the code): a non-ASCII address needs MAIL ... SMTPUTF8.
NEED_SMTPUTF8_REPLY = "553 5.6.7 Non-ASCII address without SMTPUTF8 refused"
NO_SMTPUTF8_REPLY = "555 5.5.4 SMTPUTF8 is not supported"
BAD_UTF8_ARGUMENT_REPLY = "501 5.5.4 Syntax error: invalid UTF-8 in command arguments"
BAD_UTF8_LINE_REPLY = "500 5.5.2 Syntax error: invalid UTF-8 in command line"
# RFC 5322 §2.1.1: at most 998 characters per line. Refused as content after the final dot
# (aiosmtpd said a bare 500), rather than passed on or folded.
LONG_DATA_LINE_REPLY = "550 5.6.0 Message refused: line longer than 998 characters (RFC 5322 2.1.1)"
UNKNOWN_COMMAND_REPLY = "500 5.5.2 Error: command not recognized"
_SIZE_REPLY = "552 5.3.4 Message size exceeds fixed maximum message size"

# aiosmtpd's replies without an RFC 3463 enhanced code (ours all have one), and the ones that
# would echo client bytes (control characters included) back: what we send instead.
_AIOSMTPD_REPLIES: dict[str, str] = {
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "500 Command line too long": "500 5.5.2 Line too long",  # RFC 5321 §4.5.3.1.4: 512 octets
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Error: strict ASCII mode": "500 5.5.2 Error: non-ASCII characters in command (SMTPUTF8 is not offered)",
    "501 Error: SMTPUTF8 disabled": NO_SMTPUTF8_REPLY,  # RFC 5321 §4.1.1.11: unknown parameter
    "501 Error: SMTPUTF8 takes no arguments": "501 5.5.4 SMTPUTF8 takes no arguments",
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": "503 5.5.1 Error: need RCPT command",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: send HELO first": "503 5.5.1 Error: send HELO first",
    "503 Error: send EHLO first": "503 5.5.1 Error: send EHLO first",
    "502 EXPN not implemented": "502 5.5.1 EXPN not implemented",
    "552 Error: message size exceeds fixed maximum message size": _SIZE_REPLY,
    "555 MAIL FROM parameters not recognized or not implemented":
        "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
    "555 RCPT TO parameters not recognized or not implemented":
        "555 5.5.4 RCPT TO parameters not recognized or not implemented",
    _AIOSMTPD_NEED_TLS: NEED_TLS_REPLY,
}


def standard_reply(status: str) -> str:
    """The reply to send for one aiosmtpd builds: with an enhanced code, echoing nothing."""
    if status[4:5].isdigit() or status[3:4] == "-":
        return status  # ours (enhanced code already), or a line of a multi-line reply
    fixed = _AIOSMTPD_REPLIES.get(status)
    if fixed is not None:
        return fixed
    if status.startswith("500 Error: command "):
        return UNKNOWN_COMMAND_REPLY  # aiosmtpd quotes the client's command word, NULs and all
    if status.startswith("502 Could not VRFY"):
        return "502 5.5.4 Could not VRFY that address"
    if status.startswith("501 Syntax: "):
        return "501 5.5.4 " + status[4:]
    return status


class GatewaySMTP(SMTP):
    """One connection. aiosmtpd creates one instance per connection."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        self.gateway = gateway
        config = gateway.config.server
        # Constructed by the event loop (protocol factory): hand aiosmtpd the running loop, or
        # it looks one up (and resets warning filters) for every connection.
        kwargs.setdefault("loop", asyncio.get_running_loop())
        super().__init__(
            HANDLER,
            hostname=gateway.hostname,
            ident="ESMTP scattergate",
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=config.smtputf8,
            decode_data=False,
            timeout=config.command_timeout,
            tls_context=gateway.tls_context,
            require_starttls=gateway.config.tls.required,
            auth_require_tls=True,  # AUTH is neither advertised nor taken before STARTTLS
            **kwargs,
        )
        self._smtp_methods[_BARE_LINE_COMMAND] = self._refuse_bare_line
        self._smtp_methods[_SCREENED_COMMAND] = self._refuse_screened
        self._sg_refusal = BARE_LINE_REPLY
        self._sg_init_deadlines(gateway)
        self.sg_session: Session | None = None
        self.sg_address: Address | None = None  # the path parsed by _getaddr, for the hook
        self.sg_dsn: dict[str, str] = {}  # RFC 3461 parameters of the current MAIL/RCPT
        self._sg_command = ""
        self._counted = False
        self._sg_login: LoginPassword | None = None  # credentials aiosmtpd decoded, to check
        self._sg_auth_failures = 0
        self._sg_continued: list[str] = []  # lines of a multi-line reply not yet sent

    # aiosmtpd's constructor discovers the smtp_*/auth_* methods with dir() and
    # inspect.getmembers(), which reads every attribute of the instance — per connection, a
    # sixth of the CPU a message costs under load. Listing only the names it looks for gives it
    # the same methods at a fraction of the cost. (dir() of a session is less complete as a result.)
    _method_names: list[str] | None = None

    def __dir__(self) -> list[str]:
        cls = type(self)
        if cls._method_names is None:
            cls._method_names = sorted(
                name for name in set(object.__dir__(self)) if name.startswith(("smtp_", "auth_"))
            )
        return cls._method_names

    # -- transport -------------------------------------------------------------------------

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        read_line = reader.readuntil

        async def strict_readuntil(separator: bytes = b"\n") -> bytes:
            if separator != b"\n":
                return await read_line(separator)  # DATA lines: the DATA deadline is running
            # A command line: its deadline starts when we are ready for it, not at its first
            # byte, and holds across aiosmtpd's re-reads of an overlong line.
            if self._sg_line_done:
                self._sg_await_command()
            self._sg_line_done = False
            line = await read_line(separator)
            self._sg_line_done = True
            self._sg_command_read()
            if self._sg_commands > self._sg_max_commands:
                await self._sg_too_many_commands()
            # Command lines (separator LF) must end in CRLF with no other CR or LF; DATA lines
            # are checked as a whole message at end of DATA (checks/smuggling.py).
            if not line.endswith(b"\r\n") or line.count(b"\r") != 1:
                return _BARE_LINE_COMMAND.encode() + b"\r\n"
            if not line.isascii() or b"\x00" in line:
                return self._sg_screen(line)
            return line

        reader.readuntil = strict_readuntil  # type: ignore[method-assign]

    async def _refuse_bare_line(self, arg: str | None) -> None:
        await self.push(BARE_LINE_REPLY)

    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        line = standard_reply(status) if isinstance(status, str) else status
        # aiosmtpd pushes a multi-line reply (EHLO's) a line at a time, a send() each: the
        # continuation lines wait for the last one and leave with it, in one segment.
        if isinstance(line, str) and line[3:4] == "-":
            self._sg_continued.append(line)
            return
        if self._sg_continued:
            continued = "\r\n".join(self._sg_continued)
            self._sg_continued.clear()
            if isinstance(line, str):
                line = f"{continued}\r\n{line}"
            else:
                await self._sg_send(continued)
        await self._sg_send(line)

    async def _sg_send(self, line: str | bytes) -> None:
        """One reply out. Only waits (drain) when the socket could not take all of it or the
        connection is closing: an await per reply was a few per cent of a message's CPU."""
        data = line.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(line, str) else line
        writer = self._writer
        writer.write(data + b"\r\n")
        transport = writer.transport
        if transport.get_write_buffer_size() or transport.is_closing():
            await writer.drain()

    async def _handle_client(self) -> None:
        peer = self.session.peer if self.session else None
        ip, port = (peer[0], peer[1]) if isinstance(peer, tuple) else ("unknown", 0)
        session = Session(client_ip=ip, client_port=port)
        self.sg_session = session
        verdict = await self.gateway.connect(session)
        self._counted = True
        if not isinstance(verdict, Accept):
            await self.push(str(verdict.reply))
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted and self.sg_session is not None:
            self._counted = False
            self.gateway.disconnect(self.sg_session)
        super().connection_lost(error)

    # -- deadlines and command limits (slowloris) ------------------------------------------
    # aiosmtpd re-arms one idle timer per recognized command and closes silently when it
    # fires: a client could dribble a command line for as long as it liked between commands,
    # loop NOOPs forever, and a slow but honest DATA was cut at `command_timeout` in total.
    # Instead, one TimerHandle per connection is armed lazily: each phase only moves a
    # deadline (a float), and the timer, when it fires, re-arms itself at the current deadline
    # or hangs up. Per command that is a clock read and a comparison; per received chunk an
    # addition (data_received); a timer operation only every `command_timeout` or so.

    def _sg_init_deadlines(self, gateway: Gateway) -> None:
        server = gateway.config.server
        self._sg_command_timeout = server.command_timeout
        # Our own work on a command (the RCPT checks) is bounded by rcpt_deadline: not the client's time.
        self._sg_busy_allowance = server.rcpt_deadline
        self._sg_data_timeout = server.data_timeout
        self._sg_data_rate = float(server.data_min_rate)
        self._sg_end_of_data_allowance = server.data_deadline + server.command_timeout
        self._sg_max_commands = server.max_commands
        self._sg_max_session_time = server.max_session_time
        self._sg_session_end = float("inf")  # set at connect
        self._sg_deadline = float("inf")  # the current command deadline (loop time)
        self._sg_timer: asyncio.TimerHandle | None = None
        self._sg_timer_at = float("inf")
        self._sg_line_done = True  # the last command line was complete: the next one starts fresh
        self._sg_commands = 0  # command lines since the last accepted message
        self._sg_received = 0  # bytes received on this connection (after TLS: plaintext)
        self._sg_data_start = -1.0  # loop time of the DATA command; < 0 outside DATA
        self._sg_data_base = 0

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's hook (at connect and after every recognized command): we arm our
        deadline once per connection; the reader and the DATA phase move it from then on."""
        if self._sg_session_end == float("inf"):
            now = self.loop.time()
            self._sg_session_end = now + self._sg_max_session_time
            self._sg_arm(min(now + self._sg_command_timeout, self._sg_session_end))

    def data_received(self, data: bytes) -> None:
        self._sg_received += len(data)
        super().data_received(data)

    def _sg_await_command(self) -> None:
        self._sg_arm(min(self.loop.time() + self._sg_command_timeout, self._sg_session_end))

    def _sg_command_read(self) -> None:
        # The line is in; what follows (the checks of RCPT, the reply) is not the client's time.
        self._sg_deadline += self._sg_busy_allowance
        self._sg_commands += 1

    def _sg_arm(self, deadline: float) -> None:
        self._sg_deadline = deadline
        if self._sg_timer is None or deadline < self._sg_timer_at:
            self._sg_schedule(deadline)

    def _sg_schedule(self, when: float) -> None:
        if self._sg_timer is not None:
            self._sg_timer.cancel()
        self._sg_timer_at = when
        # aiosmtpd cancels _timeout_handle when the connection is lost: let it cancel ours.
        self._sg_timer = self._timeout_handle = self.loop.call_at(when, self._sg_on_timer)

    def _sg_current_deadline(self) -> float:
        if self._sg_data_start < 0:
            return self._sg_deadline
        # DATA: data_timeout, plus a second per data_min_rate bytes received since the DATA command.
        extra = (self._sg_received - self._sg_data_base) / self._sg_data_rate if self._sg_data_rate else 0.0
        return self._sg_data_start + self._sg_data_timeout + extra

    def _sg_on_timer(self) -> None:
        self._sg_timer = None
        deadline = self._sg_current_deadline()
        if deadline - self.loop.time() > 0.001:
            self._sg_schedule(deadline)  # the deadline moved on since the timer was set
            return
        in_data = self._sg_data_start >= 0
        what = "DATA not complete" if in_data else "command line not complete"
        self._sg_hang_up(
            Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded"),
            Finding("session", "timeout", f"{what} in time"),
            Phase.DATA if in_data else None,
        )

    def _sg_data_begin(self) -> None:
        now = self.loop.time()
        self._sg_data_start, self._sg_data_base = now, self._sg_received
        self._sg_arm(now + self._sg_data_timeout)  # the earliest the DATA deadline can be

    def _sg_data_end(self) -> None:
        """The final dot is in: the end-of-DATA work is bounded by data_deadline, then the reply."""
        self._sg_data_start = -1.0
        self._sg_arm(self.loop.time() + self._sg_end_of_data_allowance)

    def _sg_message_accepted(self) -> None:
        self._sg_commands = 0

    async def _sg_too_many_commands(self) -> NoReturn:
        self._sg_hang_up(
            Reply(421, "4.7.0", f"{self.hostname} Error: too many commands"),
            Finding("session", "too_many_commands", f"more than {self._sg_max_commands} without a message"),
            None,
        )
        # Never process what the client pipelined after this: losing the connection cancels us.
        await self.loop.create_future()
        raise AssertionError("unreachable")

    def _sg_hang_up(self, reply: Reply, finding: Finding, phase: Phase | None) -> None:
        """Say 421 and close: recorded like a decision (log line, counters, dashboard)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sg = self.sg_session
        if sg is not None:
            envelope = sg.envelope
            if phase is None:
                phase = Phase.CONNECT if envelope is None else Phase.RCPT if envelope.recipients else Phase.MAIL
            self.gateway.recorder.record(
                sg, phase, str(envelope.sender) if envelope else "",
                [str(r) for r in envelope.recipients] if envelope else (), Tempfail(reply, (finding,)),
            )
        transport.write(str(reply).encode() + b"\r\n")
        transport.close()
        if transport.get_write_buffer_size():
            # A client that does not read would hold a closing connection open: give it a moment.
            self.loop.call_later(5.0, transport.abort)

    # -- command lines we refuse ourselves ---------------------------------------------------

    def _sg_screen(self, line: bytes) -> bytes:
        """A command line holding NUL or non-ASCII octets: the line itself if aiosmtpd may
        take it, else our internal command, whose handler sends the reply chosen here."""
        verb = line.split(b" ", 1)[0].rstrip(b"\r\n").upper()
        if b"\x00" in line:
            self._sg_refusal = NUL_REPLY
            return _SCREENED_COMMAND.encode() + b"\r\n"
        try:
            upper = line.decode("utf-8").upper()
        except UnicodeDecodeError:
            # aiosmtpd would carry the bad octets on as surrogates, into addresses and logs.
            known = verb.isascii() and verb.decode() in self._smtp_methods
            self._sg_refusal = BAD_UTF8_ARGUMENT_REPLY if known else BAD_UTF8_LINE_REPLY
            return _SCREENED_COMMAND.encode() + b"\r\n"
        if verb == b"MAIL":
            declared = "SMTPUTF8" in upper.split()
            if declared and not self.enable_SMTPUTF8:
                self._sg_refusal = NO_SMTPUTF8_REPLY
            elif not declared:
                self._sg_refusal = NEED_SMTPUTF8_REPLY
            else:
                return line
        elif verb == b"RCPT":
            if self.envelope is not None and self.envelope.smtp_utf8:
                return line
            self._sg_refusal = NEED_SMTPUTF8_REPLY
        else:
            return line  # a non-ASCII command word or HELO name: aiosmtpd's checks apply
        return _SCREENED_COMMAND.encode() + b"\r\n"

    async def _refuse_screened(self, arg: str | None) -> None:
        await self.push(self._sg_refusal)

    def _sg_refuse_content(self, outcome: DataOutcome) -> str:
        """The reply to a message refused as it was read (our checks never saw it), recorded
        like any decision; the transaction ends on our side too."""
        reply, finding = (
            (LONG_DATA_LINE_REPLY, Finding("message", "line_too_long", "a line longer than 998 characters"))
            if outcome is DataOutcome.TOO_LONG
            else (_SIZE_REPLY, Finding("message", "too_large", "more than the maximum message size"))
        )
        sg = self.sg_session
        if sg is not None:
            envelope, sg.envelope = sg.envelope, None
            self.gateway.recorder.record(
                sg, Phase.DATA, str(envelope.sender) if envelope else "",
                [str(r) for r in envelope.recipients] if envelope else (),
                Reject(Reply.parse(reply), (finding,)),
            )
        return reply

    # -- addresses -------------------------------------------------------------------------

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Parse '<path> params' with our strict parser; remember the parsed address."""
        arg = arg.strip()
        if arg.startswith("<"):
            end = _closing_bracket(arg)
            if end < 0:
                return None, None
            path, rest = arg[: end + 1], arg[end + 1:]
        else:
            path, _, rest = arg.partition(" ")
        try:
            address = parse_path(path, allow_null=True)
        except AddressError as exc:
            log.debug("malformed path %r: %s", path, exc)
            return None, None
        self.sg_address = address
        rest = self._take_dsn_params(rest)
        # aiosmtpd treats an empty string as "no address"; the null path is spelled "<>".
        return (str(address) or "<>"), rest.strip()

    def _take_dsn_params(self, rest: str) -> str:
        """Take the RFC 3461 parameters out of the command (case preserved: ENVID and ORCPT are
        xtext); leave everything else, including a malformed DSN parameter, to aiosmtpd, which
        answers 555 for parameters it does not know."""
        self.sg_dsn = {}
        if not (self.session and self.session.extended_smtp):
            return rest
        allowed = {"MAIL": ("RET", "ENVID"), "RCPT": ("NOTIFY", "ORCPT")}.get(self._sg_command, ())
        kept = []
        for token in rest.split():
            key, _, value = token.partition("=")
            key = key.upper()
            if key in allowed and key not in self.sg_dsn and dsn_param_valid(key, value):
                self.sg_dsn[key] = value.upper() if key in ("RET", "NOTIFY") else value
            else:
                kept.append(token)
        return " ".join(kept)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._sg_command = "MAIL"
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._sg_command = "RCPT"
        await super().smtp_RCPT(arg)

    # -- SMTP AUTH -------------------------------------------------------------------------
    # aiosmtpd decodes PLAIN and LOGIN (challenges included) and then checks the credentials
    # synchronously; scrypt must not stall every other session, so _authenticate only keeps
    # them and the auth_* overrides check them in a thread (Gateway.authenticate).

    async def smtp_AUTH(self, arg: str) -> None:
        if self.gateway.credentials is None:
            await self.push(NO_AUTH_REPLY)
            return
        if self.sg_session is not None and self._tls_protocol is not None \
                and await self.gateway.auth_locked_out(self.sg_session):
            # RFC 4954 §6: temporary failure. No password is checked, so guessing teaches nothing.
            await self.push(AUTH_LOCKED_OUT_REPLY)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_AUTH(arg)
        if self._sg_auth_failures >= self.gateway.config.smtp_auth.max_failures and self.transport is not None:
            # A password guesser gets a few tries per connection, each costing it a reconnect.
            await self.push(AUTH_LOCKOUT_REPLY)
            self.transport.close()

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._sg_login = auth_data
        return AuthResult(success=False, handled=False)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._sg_check(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._sg_check(await super().auth_LOGIN(server, args))

    async def _sg_check(self, decoded: AuthResult) -> AuthResult:
        login, self._sg_login = self._sg_login, None
        if login is None or self.sg_session is None:
            return decoded  # nothing to check: aiosmtpd already answered (bad base64, '*')
        try:
            user = login.login.decode("utf-8")
        except UnicodeDecodeError:
            user = ""  # no such user: refused like any unknown one (same work, same log line)
        if await self.gateway.authenticate(self.sg_session, user, login.password):
            return AuthResult(success=True, auth_data=user)
        self._sg_auth_failures += 1
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    async def smtp_DATA(self, arg: str | None) -> None:
        self._sg_data_begin()
        try:
            await self._sg_data(arg)
        finally:
            self._sg_data_start = -1.0  # refused before 354, or done: back to command deadlines

    async def _sg_data(self, arg: str | None) -> None:
        """DATA with the content read in blocks of lines (frontends/smtp_data.py) rather than
        aiosmtpd's line-at-a-time loop; the sequencing checks and the hook are aiosmtpd's."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        accumulator = DataAccumulator(self.data_size_limit, self.line_length_limit)
        try:
            await read_data(self._reader, accumulator)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if accumulator.outcome is not DataOutcome.NOMINAL:
            self._set_post_data_state()
            await self.push(self._sg_refuse_content(accumulator.outcome))
            return
        content = accumulator.content()
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    # Keep aiosmtpd's HELP syntax notes (attributes on its methods) on our overrides.
    functools.update_wrapper(smtp_MAIL, SMTP.smtp_MAIL, assigned=(), updated=("__dict__",))
    functools.update_wrapper(smtp_RCPT, SMTP.smtp_RCPT, assigned=(), updated=("__dict__",))
    functools.update_wrapper(smtp_DATA, SMTP.smtp_DATA, assigned=(), updated=("__dict__",))
    functools.update_wrapper(smtp_AUTH, SMTP.smtp_AUTH, assigned=(), updated=("__dict__",))


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


def dsn_param_valid(key: str, value: str) -> bool:
    """RFC 3461 §4: syntax of RET, ENVID, NOTIFY and ORCPT values."""
    if key == "RET":
        return value.upper() in ("FULL", "HDRS")
    if key == "ENVID":
        return 0 < len(value) <= 100 and bool(_XTEXT.fullmatch(value))
    if key == "NOTIFY":
        words = value.upper().split(",")
        if words == ["NEVER"]:
            return True
        return len(set(words)) == len(words) and all(w in ("SUCCESS", "FAILURE", "DELAY") for w in words)
    if key == "ORCPT":
        addr_type, semicolon, text = value.partition(";")
        return bool(semicolon and addr_type and text) and len(value) <= 500 and bool(_XTEXT.fullmatch(text))
    return False


def _closing_bracket(text: str) -> int:
    """Index of the '>' closing a path, skipping quoted strings (a quoted local part may hold '>')."""
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return -1


class _Handler:
    """aiosmtpd hooks; each one asks the connection's gateway (`server.gateway`: a SIGHUP
    swaps it) and turns its verdict into the reply. Stateless, so one serves every
    connection: aiosmtpd inspects its handler's methods for each new connection."""

    _method_names: list[str] = []  # set below the class: its handle_* methods

    def __dir__(self) -> list[str]:
        # What aiosmtpd looks for (handle_*, auth_*): the full dir() walk cost ~3% of a message.
        return self._method_names

    async def handle_HELO(self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope, hostname: str) -> str:
        assert server.sg_session is not None
        server.sg_session.helo = hostname
        server.sg_session.esmtp = False
        server.sg_session.envelope = None
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        assert server.sg_session is not None
        server.sg_session.helo = hostname
        server.sg_session.esmtp = True
        server.sg_session.envelope = None
        session.host_name = hostname
        if server.gateway.credentials is None:  # aiosmtpd lists AUTH after STARTTLS regardless
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        # RFC 3461: we take NOTIFY/ORCPT/RET/ENVID and honour them (never a DSN for NOTIFY=NEVER).
        # RFC 2034: every reply of ours carries an enhanced status code (standard_reply adds
        # one to aiosmtpd's), so say so.
        return [*responses[:-1], "250-DSN", "250-ENHANCEDSTATUSCODES", responses[-1]]

    def handle_STARTTLS(self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope) -> bool:
        """The handshake succeeded (aiosmtpd calls this after it). RFC 3207 §4.2: forget what
        the client said in clear text; it must EHLO again."""
        sg = server.sg_session
        if sg is not None:
            sg.tls = True
            sg.helo, sg.esmtp, sg.envelope = "", False, None
        return True

    async def handle_MAIL(
        self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope, address: str, options: list[str]
    ) -> str:
        sg = server.sg_session
        assert sg is not None and server.sg_address is not None
        dsn = server.sg_dsn
        sg.envelope = server.gateway.mail(sg, server.sg_address, options, ret=dsn.get("RET", ""), envid=dsn.get("ENVID", ""))
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return str(MAIL_OK)

    async def handle_RCPT(
        self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope, address: str, options: list[str]
    ) -> str:
        sg = server.sg_session
        assert sg is not None and server.sg_address is not None
        if sg.envelope is None:
            return "503 5.5.1 Error: need MAIL command"
        recipient = server.sg_address
        if recipient.is_null:
            return "553 5.1.3 Error: the null address is not a valid recipient"
        dsn = server.sg_dsn
        notify = frozenset(dsn["NOTIFY"].split(",")) if "NOTIFY" in dsn else None
        verdict = await server.gateway.rcpt(sg, sg.envelope, recipient, RcptDsn(notify, dsn.get("ORCPT", "")))
        if isinstance(verdict, (Accept, Quarantine)):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return str(verdict.reply)

    async def handle_RSET(self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope) -> str:
        if server.sg_session is not None:
            server.sg_session.envelope = None
        return "250 2.0.0 OK"

    async def handle_DATA(self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope) -> str:
        sg = server.sg_session
        assert sg is not None and sg.envelope is not None
        server._sg_data_end()
        content = envelope.original_content or b""
        current, sg.envelope = sg.envelope, None
        verdict = await server.gateway.data(sg, current, content)
        if isinstance(verdict, (Accept, Quarantine)):
            server._sg_message_accepted()
        return str(verdict.reply)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # A client that fails the handshake (no common version, bad data): aiosmtpd drops it.
            log.info("TLS handshake failed: %s", error.__cause__ or error)
            return ""
        # Never a crash and never a silent accept: the client is told to try again.
        log.exception("unexpected error in SMTP session", exc_info=error)
        return "451 4.3.0 Internal error, try again later"


_Handler._method_names = sorted(name for name in vars(_Handler) if name.startswith(("handle_", "auth_")))
HANDLER = _Handler()
# aiosmtpd reads handle_EHLO's signature for every connection (to tell its old 4-argument form
# from the new one). For a bound method inspect.signature rebuilds it each time; a partial
# carrying its signature is answered at once.
_EHLO_HOOK = functools.partial(_Handler.handle_EHLO, HANDLER)
_EHLO_HOOK.__signature__ = inspect.signature(_EHLO_HOOK)  # type: ignore[attr-defined]
HANDLER.handle_EHLO = _EHLO_HOOK  # type: ignore[method-assign]
