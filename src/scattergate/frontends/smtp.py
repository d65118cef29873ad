"""The SMTP front end: aiosmtpd on the wire, the Gateway pipeline behind it.

aiosmtpd handles the protocol (sequencing, SIZE, line limits, dot-unstuffing); this module
adds what a gateway needs on top, without copying its internals:
- strict CRLF on command lines (a bare CR or LF is refused, so no smuggling ambiguity);
- our own RFC 5321 path parser, so relay tricks are seen rather than normalised away;
- connection limits before the banner;
- every MAIL/RCPT/DATA answer taken from the verdict of the decision layer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope as AioEnvelope, Session as AioSession

from scattergate.address import Address, AddressError, parse_path
from scattergate.model import Accept, Quarantine, RcptDsn, Session
from scattergate.pipeline import MAIL_OK, Gateway

log = logging.getLogger(__name__)

# Command name our reader substitutes for a line with a bare CR or LF. aiosmtpd upper-cases
# and ASCII-decodes the command word, so a client typing it gets the same refusal: harmless.
_BARE_LINE_COMMAND = "\x00BARE"
BARE_LINE_REPLY = "500 5.5.2 Syntax error: bare CR or LF in command line refused"


class GatewaySMTP(SMTP):
    """One connection. aiosmtpd creates one instance per connection."""

    def __init__(self, gateway: Gateway, **kwargs: Any) -> None:
        self.gateway = gateway
        config = gateway.config.server
        super().__init__(
            _Handler(gateway),
            hostname=gateway.hostname,
            ident="ESMTP scattergate",
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=config.smtputf8,
            decode_data=False,
            timeout=config.command_timeout,
            **kwargs,
        )
        self._smtp_methods[_BARE_LINE_COMMAND] = self._refuse_bare_line
        self.sg_session: Session | None = None
        self.sg_address: Address | None = None  # the path parsed by _getaddr, for the hook
        self.sg_dsn: dict[str, str] = {}  # RFC 3461 parameters of the current MAIL/RCPT
        self._sg_command = ""
        self._counted = False

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
            line = await read_line(separator)
            # Command lines (separator LF) must end in CRLF with no other CR or LF; DATA lines
            # are checked as a whole message at end of DATA (checks/smuggling.py).
            if separator == b"\n" and (not line.endswith(b"\r\n") or line.count(b"\r") != 1):
                return _BARE_LINE_COMMAND.encode() + b"\r\n"
            return line

        reader.readuntil = strict_readuntil  # type: ignore[method-assign]

    async def _refuse_bare_line(self, arg: str | None) -> None:
        await self.push(BARE_LINE_REPLY)

    async def _handle_client(self) -> None:
        peer = self.session.peer if self.session else None
        ip, port = (peer[0], peer[1]) if isinstance(peer, tuple) else ("unknown", 0)
        session = Session(client_ip=ip, client_port=port)
        self.sg_session = session
        verdict = self.gateway.connect(session)
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

    # Keep aiosmtpd's HELP syntax notes (attributes on its methods) on our overrides.
    functools.update_wrapper(smtp_MAIL, SMTP.smtp_MAIL, assigned=(), updated=("__dict__",))
    functools.update_wrapper(smtp_RCPT, SMTP.smtp_RCPT, assigned=(), updated=("__dict__",))


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
    """aiosmtpd hooks; each one asks the gateway and turns its verdict into the reply."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

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
        # RFC 3461: we take NOTIFY/ORCPT/RET/ENVID and honour them (never a DSN for NOTIFY=NEVER).
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_MAIL(
        self, server: GatewaySMTP, session: AioSession, envelope: AioEnvelope, address: str, options: list[str]
    ) -> str:
        sg = server.sg_session
        assert sg is not None and server.sg_address is not None
        dsn = server.sg_dsn
        sg.envelope = self.gateway.mail(sg, server.sg_address, options, ret=dsn.get("RET", ""), envid=dsn.get("ENVID", ""))
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
        verdict = await self.gateway.rcpt(sg, sg.envelope, recipient, RcptDsn(notify, dsn.get("ORCPT", "")))
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
        content = envelope.original_content or b""
        current, sg.envelope = sg.envelope, None
        verdict = await self.gateway.data(sg, current, content)
        return str(verdict.reply)

    async def handle_exception(self, error: Exception) -> str:
        # Never a crash and never a silent accept: the client is told to try again.
        log.exception("unexpected error in SMTP session", exc_info=error)
        return "451 4.3.0 Internal error, try again later"
