"""The SMTP server protocol (RFC 5321) as a sans-IO state machine: bytes in, events and replies out.

No sockets, no clock, no logging: `receive_data()` takes what arrived, `next_event()` returns
the next thing the caller must act on, and every reply leaves through `take_output()`. Replies
the protocol can give by itself (syntax and sequencing errors, EHLO, NOOP, HELP...) are queued
at once; for MAIL, RCPT, the message and AUTH credentials the caller decides and answers with
`answer()`, which queues its reply and moves the state on. Commands pipelined behind (RFC 2920)
wait in the buffer until then, so a pipelined command is never run before the answer to the one
before it.

Sequencing is one table, `SEQUENCE` (in the spirit of h11's _state.py): for each command and
transaction phase, either the phase it leads to or the reply that refuses it.

Limits (each with the RFC that sets it):
- a command line: 512 octets with its CRLF (RFC 5321 §4.5.3.1.4), MAIL +26 for SIZE
  (RFC 1870 §3) and +10 for SMTPUTF8 (RFC 6531 §3.4) after EHLO; an AUTH line 12,288
  (RFC 4954 §4). Longer: `500 5.5.2 Line too long`, the line is read to its end and dropped;
- a command line ends in CRLF only; a bare CR or LF in it is refused (no smuggling ambiguity);
- a text line in DATA: 998 characters and CRLF (RFC 5321 §4.5.3.1.6, RFC 5322 §2.1.1);
- the message: `max_message_size` octets as received (RFC 1870);
- DATA ends only at CRLF "." CRLF (RFC 5321 §4.1.1.4); lone CRs and LFs are content, for the
  smuggling check to refuse (checks/smuggling.py); a leading dot is removed (§4.5.2);
- `max_commands` command lines since the last accepted message (ours: NOOP/RSET loops).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final

from scattergate.address import Address, AddressError, parse_path
from scattergate.frontends import smtp_auth
from scattergate.frontends.smtp_auth import AuthSyntaxError

# -- limits -----------------------------------------------------------------------------------
COMMAND_LINE_LIMIT: Final = 512  # RFC 5321 §4.5.3.1.4, CRLF included
SIZE_PARAMETER_EXTRA: Final = 26  # RFC 1870 §3: MAIL may be this much longer with SIZE offered
SMTPUTF8_PARAMETER_EXTRA: Final = 10  # RFC 6531 §3.4
AUTH_LINE_LIMIT: Final = 12288  # RFC 4954 §4, CRLF included
TEXT_LINE_LIMIT: Final = 1000  # RFC 5321 §4.5.3.1.6 / RFC 5322 §2.1.1: 998 characters + CRLF
ENVID_LIMIT: Final = 100  # RFC 3461 §4.4
ORCPT_LIMIT: Final = 500  # RFC 3461 §4.2

# -- replies (code, RFC 3463 enhanced status code, text) ----------------------------------------
OK: Final = "250 2.0.0 OK"
BYE: Final = "221 2.0.0 Bye"
START_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"
READY_FOR_TLS: Final = "220 2.0.0 Ready to start TLS"
AUTH_OK: Final = "235 2.7.0 Authentication successful"
AUTH_FAILED: Final = "535 5.7.8 Authentication credentials invalid"
CANNOT_VRFY: Final = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
LINE_TOO_LONG: Final = "500 5.5.2 Line too long"
BAD_SYNTAX: Final = "500 5.5.2 Error: bad syntax"
UNKNOWN_COMMAND: Final = "500 5.5.2 Error: command not recognized"
BARE_LINE: Final = "500 5.5.2 Syntax error: bare CR or LF in command line refused"
NUL_IN_COMMAND: Final = "500 5.5.2 Syntax error: NUL character in command line"
BAD_UTF8_LINE: Final = "500 5.5.2 Syntax error: invalid UTF-8 in command line"
NON_ASCII_NOT_OFFERED: Final = "500 5.5.2 Error: non-ASCII characters in command (SMTPUTF8 is not offered)"
BAD_UTF8_ARGUMENT: Final = "501 5.5.4 Syntax error: invalid UTF-8 in command arguments"
BODY_VALUES: Final = "501 5.5.4 BODY can only be one of 7BIT, 8BITMIME"
SMTPUTF8_NO_VALUE: Final = "501 5.5.4 SMTPUTF8 takes no arguments"
NOT_ENOUGH_VALUE: Final = "501 5.5.4 Not enough value"
NO_VRFY: Final = "502 5.5.4 Could not VRFY that address"
NO_EXPN: Final = "502 5.5.1 EXPN not implemented"
NO_AUTH: Final = "502 5.5.1 AUTH not available"
NEED_HELO: Final = "503 5.5.1 Error: send HELO first"
NEED_EHLO: Final = "503 5.5.1 Error: send EHLO first"
NEED_MAIL: Final = "503 5.5.1 Error: need MAIL command"
NEED_RCPT: Final = "503 5.5.1 Error: need RCPT command"
NESTED_MAIL: Final = "503 5.5.1 Error: nested MAIL command"
ALREADY_AUTHENTICATED: Final = "503 5.5.1 Already authenticated"
AUTH_IN_TRANSACTION: Final = "503 5.5.1 Error: AUTH not permitted during a mail transaction"  # RFC 4954 §4
TLS_ACTIVE: Final = "503 5.5.1 Error: TLS already active"
UNKNOWN_MECHANISM: Final = "504 5.5.4 Unrecognized authentication type"
NEED_TLS: Final = "530 5.7.0 Must issue a STARTTLS command first"  # RFC 3207 §4
AUTH_NEEDS_TLS: Final = "538 5.7.11 Encryption required for requested authentication mechanism"  # RFC 4954 §6
NO_TLS: Final = "454 4.7.0 TLS not available"
MESSAGE_TOO_BIG: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
NULL_RECIPIENT: Final = "553 5.1.3 Error: the null address is not a valid recipient"
MALFORMED_ADDRESS: Final = "553 5.1.3 Error: malformed address"
# RFC 6531 §3.5 (and RFC 6533 for the code): a non-ASCII address needs MAIL ... SMTPUTF8.
NEED_SMTPUTF8: Final = "553 5.6.7 Non-ASCII address without SMTPUTF8 refused"
NO_SMTPUTF8: Final = "555 5.5.4 SMTPUTF8 is not supported"  # RFC 5321 §4.1.1.11
MAIL_PARAMETERS: Final = "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
RCPT_PARAMETERS: Final = "555 5.5.4 RCPT TO parameters not recognized or not implemented"

_ALLOWED_BEFORE_TLS = frozenset({"EHLO", "HELO", "NOOP", "QUIT", "RSET", "STARTTLS"})
COMMANDS = ("AUTH", "DATA", "EHLO", "EXPN", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET",
            "STARTTLS", "VRFY")


class Phase(enum.Enum):
    """Where the transaction stands (RFC 5321 §4.1.4)."""

    FRESH = "fresh"  # no HELO/EHLO yet (also after STARTTLS: RFC 3207 §4.2)
    GREETED = "greeted"  # HELO/EHLO, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted


class Mode(enum.Enum):
    """What the next bytes are."""

    COMMAND = "command"
    DATA = "data"  # message content, up to CRLF.CRLF
    AUTH = "auth"  # the answer to a 334 challenge
    ANSWER = "answer"  # waiting for the caller's answer() to an event
    TLS = "tls"  # 220 to STARTTLS sent: nothing is read until tls_started()
    CLOSED = "closed"


# The sequencing table: (command, phase) -> the phase it leads to when the caller accepts it
# (None: it leaves the phase as it is), or the reply that refuses it. A command absent from
# the table is not sequenced (NOOP, HELP, VRFY, EXPN, QUIT, STARTTLS).
SEQUENCE: Final[dict[tuple[str, Phase], Phase | str | None]] = {
    **{("HELO", p): Phase.GREETED for p in Phase},
    **{("EHLO", p): Phase.GREETED for p in Phase},
    ("RSET", Phase.FRESH): None,
    **{("RSET", p): Phase.GREETED for p in (Phase.GREETED, Phase.MAIL, Phase.RCPT)},
    ("MAIL", Phase.FRESH): NEED_HELO,
    ("MAIL", Phase.GREETED): Phase.MAIL,
    ("MAIL", Phase.MAIL): NESTED_MAIL,
    ("MAIL", Phase.RCPT): NESTED_MAIL,
    ("RCPT", Phase.FRESH): NEED_HELO,
    ("RCPT", Phase.GREETED): NEED_MAIL,
    ("RCPT", Phase.MAIL): Phase.RCPT,
    ("RCPT", Phase.RCPT): Phase.RCPT,
    ("DATA", Phase.FRESH): NEED_HELO,
    ("DATA", Phase.GREETED): NEED_MAIL,
    ("DATA", Phase.MAIL): NEED_RCPT,
    ("DATA", Phase.RCPT): Phase.GREETED,  # after the message, whatever the answer
    ("AUTH", Phase.FRESH): NEED_EHLO,
    ("AUTH", Phase.GREETED): None,
    ("AUTH", Phase.MAIL): AUTH_IN_TRANSACTION,
    ("AUTH", Phase.RCPT): AUTH_IN_TRANSACTION,
}


# -- events -------------------------------------------------------------------------------------


class _Sentinel(enum.Enum):
    NEED_DATA = "need data"  # nothing more to do until more bytes arrive
    PAUSED = "paused"  # an event waits for answer() (or tls_started())


NEED_DATA: Final = _Sentinel.NEED_DATA
PAUSED: Final = _Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class Hello:
    """HELO or EHLO (the reply is queued); the transaction, if any, is gone."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM, syntax checked; answer() with the reply (accepted: the transaction starts)."""

    sender: Address
    options: tuple[str, ...]  # upper-cased parameters other than the DSN ones (SIZE, BODY, SMTPUTF8)
    ret: str = ""  # RFC 3461 RET
    envid: str = ""  # RFC 3461 ENVID (xtext, case kept)


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO, syntax checked; answer() with the reply (accepted: the recipient counts)."""

    recipient: Address
    options: tuple[str, ...]
    notify: frozenset[str] | None = None  # RFC 3461 NOTIFY; None when not given
    orcpt: str = ""


@dataclass(frozen=True, slots=True)
class DataStarted:
    """DATA accepted; 354 is queued."""


class DataOutcome(enum.Enum):
    TOO_LONG = "too_long"  # a line of more than 998 characters
    TOO_MUCH = "too_much"  # more than the size limit


@dataclass(frozen=True, slots=True)
class Message:
    """The final dot: the content, dot-unstuffed. answer() (accepted: a message was taken)."""

    content: bytes


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """The final dot of a message broken as it was read; answer() with the refusal."""

    outcome: DataOutcome


@dataclass(frozen=True, slots=True)
class Reset:
    """RSET (the reply is queued): the transaction is gone."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS: the 220 is queued; the caller upgrades and calls tls_started(), or closes."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTH credentials, decoded; answer() with AUTH_OK (accepted) or a refusal. Never log them."""

    mechanism: str
    user: bytes
    password: bytes = field(repr=False)  # a traceback or a debug print must not carry it


@dataclass(frozen=True, slots=True)
class Unrecognised:
    """A command line refused as unknown (reply queued). Only its length: it may be a secret
    (a client that sends its base64 credentials after AUTH was refused)."""

    octets: int


@dataclass(frozen=True, slots=True)
class TooManyCommands:
    """More than max_commands command lines since the last accepted message; nothing more is read."""


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT: 221 is queued; the caller sends it and closes."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The client closed its side."""

    in_data: bool


Event = (Hello | MailFrom | RcptTo | DataStarted | Message | MessageRefused | Reset | StartTls | Authenticate
         | Unrecognised | TooManyCommands | Quit | Closed)


@dataclass(frozen=True, slots=True)
class Settings:
    hostname: str
    ident: str = "ESMTP scattergate"
    max_message_size: int = 0  # 0: none advertised or enforced
    smtputf8: bool = True
    tls_available: bool = False
    tls_required: bool = False
    auth_available: bool = False
    max_commands: int = 0  # 0: no limit


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


def dsn_param_valid(key: str, value: str) -> bool:
    """RFC 3461 §4: syntax of RET, ENVID, NOTIFY and ORCPT values."""
    if key == "RET":
        return value.upper() in ("FULL", "HDRS")
    if key == "ENVID":
        return 0 < len(value) <= ENVID_LIMIT and bool(_XTEXT.fullmatch(value))
    if key == "NOTIFY":
        words = value.upper().split(",")
        if words == ["NEVER"]:
            return True
        return len(set(words)) == len(words) and all(w in ("SUCCESS", "FAILURE", "DELAY") for w in words)
    if key == "ORCPT":
        addr_type, semicolon, text = value.partition(";")
        return bool(semicolon and addr_type and text) and len(value) <= ORCPT_LIMIT and bool(_XTEXT.fullmatch(text))
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


def split_path(arg: str) -> tuple[Address, str] | None:
    """'<path> params' -> (the address, the parameters), or None when the path is malformed."""
    arg = arg.strip()
    if arg.startswith("<"):
        end = _closing_bracket(arg)
        if end < 0:
            return None
        path, rest = arg[: end + 1], arg[end + 1:]
    else:
        path, _, rest = arg.partition(" ")
    try:
        return parse_path(path, allow_null=True), rest.strip()
    except AddressError:
        return None


class _Refused(Exception):
    """A command refused with `reply` while parsing it."""

    def __init__(self, reply: str) -> None:
        self.reply = reply


class ServerProtocol:
    """One SMTP server connection's protocol state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.phase = Phase.FRESH
        self.mode = Mode.COMMAND
        self.extended = False  # EHLO (not HELO) in this phase of the session
        self.tls = False
        self.authenticated = False
        self.auth_attempted = False  # from here on nothing the client sends is worth logging
        self.smtputf8 = False  # the current transaction declared SMTPUTF8
        self.commands = 0  # command lines since the last accepted message
        self.lines_read = 0  # command and AUTH lines read in all (the caller's deadlines follow it)
        self._buffer = bytearray()
        self._output: list[bytes] = []
        self._eof = False
        self._skipping = False  # dropping the rest of an overlong command line
        self._pending: tuple[str, Phase | None] | None = None  # (command, phase if accepted)
        self._pending_smtputf8 = False  # MAIL awaiting its answer declared SMTPUTF8
        # AUTH exchange
        self._auth_mechanism = ""
        self._auth_user: bytes | None = None
        # DATA
        self._data_size = 0
        self._data_outcome: DataOutcome | None = None
        self._data_mid_line = False  # inside an overlong line, dropping it
        self._data_blocks: list[bytes] = []

    # -- the caller's interface ----------------------------------------------------------------

    def greeting(self) -> str:
        return f"220 {self.settings.hostname} {self.settings.ident}"

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" means it closed its side."""
        if not data:
            self._eof = True
        elif self.mode is not Mode.TLS and self.mode is not Mode.CLOSED:
            # RFC 3207 §4.2 (and CVE-2011-0411): nothing sent in clear text after STARTTLS counts.
            self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_output(self) -> bytes:
        """The replies queued so far, CRLF-terminated, in order; empties the queue."""
        if not self._output:
            return b""
        out = b"".join(self._output)
        self._output.clear()
        return out

    def reply(self, line: str) -> None:
        """Queue a reply (or a multi-line reply, lines separated by CRLF)."""
        self._output.append(line.encode("utf-8", "surrogateescape") + b"\r\n")

    def answer(self, reply: str, accepted: bool) -> None:
        """The caller's answer to the event next_event() returned last (MailFrom, RcptTo,
        Message, MessageRefused, Authenticate)."""
        assert self.mode is Mode.ANSWER and self._pending is not None, "no event waits for an answer"
        command, target = self._pending
        self._pending = None
        self.mode = Mode.COMMAND
        self.reply(reply)
        if command == "DATA":
            self.phase = Phase.GREETED  # RFC 5321 §4.1.1.4: the transaction ends with the reply
            self.smtputf8 = False
            if accepted:
                self.commands = 0
        elif command == "AUTH":
            self.authenticated = accepted
        elif accepted and target is not None:
            self.phase = target
            if command == "MAIL":
                self.smtputf8 = self._pending_smtputf8

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS succeeded. RFC 3207 §4.2: forget everything."""
        assert self.mode is Mode.TLS
        self.mode, self.phase, self.tls, self.extended = Mode.COMMAND, Phase.FRESH, True, False
        self._buffer.clear()

    def close(self) -> None:
        self.mode = Mode.CLOSED
        self._buffer.clear()

    def next_event(self) -> Event | _Sentinel:
        """The next event for the caller, NEED_DATA, or PAUSED (an answer is awaited)."""
        while True:
            mode = self.mode
            if mode is Mode.COMMAND:
                event = self._command()
            elif mode is Mode.DATA:
                event = self._data()
            elif mode is Mode.AUTH:
                event = self._auth_line()
            elif mode is Mode.CLOSED:
                return NEED_DATA
            else:
                return PAUSED
            if event is not None:
                return event

    # -- command lines ---------------------------------------------------------------------------

    def _read_line(self, limit: int) -> bytes | None | _Sentinel:
        """The next line (with its LF) if complete; None when an overlong one was just dropped."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > limit:
                self._skipping = True  # keep no more of it than this
                buffer.clear()
            return NEED_DATA
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        self.lines_read += 1
        if self._skipping:
            self._skipping = False
            return None
        if len(line) > limit:
            return None
        return line

    def _end_of_input(self) -> Closed | _Sentinel:
        if self._eof:
            self.close()
            return Closed(in_data=False)
        return NEED_DATA

    def _command(self) -> Event | _Sentinel | None:
        line = self._read_line(AUTH_LINE_LIMIT)
        if line is NEED_DATA:
            return self._end_of_input()
        max_commands = self.settings.max_commands
        self.commands += 1
        if max_commands and self.commands > max_commands:
            self.close()
            return TooManyCommands()
        if line is None:
            self.reply(LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        if not line.endswith(b"\r\n") or line.count(b"\r") != 1:
            self.reply(BARE_LINE)
            return None
        text = self._decode(line)
        if text is None:
            return None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        if not verb:
            self.reply(BAD_SYNTAX)
            return None
        if len(line) > self._line_limit(verb):
            self.reply(LINE_TOO_LONG)
            return None
        if self.settings.tls_required and not self.tls and verb not in _ALLOWED_BEFORE_TLS:
            self.reply(NEED_TLS)
            return None
        handler = _HANDLERS.get(verb)
        if handler is None:
            self.reply(UNKNOWN_COMMAND)
            return Unrecognised(len(line))
        try:
            return handler(self, arg)
        except _Refused as refused:
            self.reply(refused.reply)
            return None

    def _line_limit(self, verb: str) -> int:
        if verb == "AUTH":
            return AUTH_LINE_LIMIT
        if verb == "MAIL" and self.extended:
            return (COMMAND_LINE_LIMIT + (SIZE_PARAMETER_EXTRA if self.settings.max_message_size else 0)
                    + (SMTPUTF8_PARAMETER_EXTRA if self.settings.smtputf8 else 0))
        return COMMAND_LINE_LIMIT

    def _decode(self, line: bytes) -> str | None:
        """The command line as text, or None with the refusal queued (NUL, bad UTF-8, a
        non-ASCII address without SMTPUTF8)."""
        body = line[:-2]
        if b"\x00" in body:
            self.reply(NUL_IN_COMMAND)
            return None
        if body.isascii():
            return body.decode("ascii")
        verb = body.split(b" ", 1)[0].upper()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            known = verb.isascii() and verb.decode() in _HANDLERS
            self.reply(BAD_UTF8_ARGUMENT if known else BAD_UTF8_LINE)
            return None
        if not verb.isascii():
            self.reply(BAD_SYNTAX)
            return None
        if verb == b"MAIL":
            declared = "SMTPUTF8" in text.upper().split()
            if declared and not self.settings.smtputf8:
                self.reply(NO_SMTPUTF8)
            elif not declared:
                self.reply(NEED_SMTPUTF8)
            else:
                return text
            return None
        if verb == b"RCPT":
            if self.smtputf8 and self.phase in (Phase.MAIL, Phase.RCPT):
                return text
            self.reply(NEED_SMTPUTF8)
            return None
        if not self.settings.smtputf8:
            self.reply(NON_ASCII_NOT_OFFERED)
            return None
        return text

    def _sequence(self, verb: str) -> Phase | None:
        """The phase `verb` leads to, or _Refused with the table's reply."""
        step = SEQUENCE[(verb, self.phase)]
        if isinstance(step, str):
            raise _Refused(step)
        return step

    def _await(self, verb: str, target: Phase | None) -> None:
        self._pending = (verb, target)
        self.mode = Mode.ANSWER

    # -- the commands ------------------------------------------------------------------------------

    def _helo(self, arg: str) -> Hello:
        if not arg:
            raise _Refused("501 5.5.4 Syntax: HELO hostname")
        self.phase, self.extended, self.smtputf8 = self._sequence("HELO") or Phase.GREETED, False, False
        self.reply(f"250 {self.settings.hostname}")
        return Hello(arg, extended=False)

    def _ehlo(self, arg: str) -> Hello:
        if not arg:
            raise _Refused("501 5.5.4 Syntax: EHLO hostname")
        self.phase, self.extended, self.smtputf8 = self._sequence("EHLO") or Phase.GREETED, True, False
        settings = self.settings
        lines = [settings.hostname]
        if settings.max_message_size:
            lines.append(f"SIZE {settings.max_message_size}")  # RFC 1870
        lines += ["8BITMIME", "PIPELINING"]  # RFC 6152, RFC 2920
        if settings.smtputf8:
            lines.append("SMTPUTF8")  # RFC 6531
        if settings.tls_available and not self.tls:
            lines.append("STARTTLS")  # RFC 3207
        if settings.auth_available and self.tls:
            lines.append("AUTH " + " ".join(smtp_auth.MECHANISMS))  # RFC 4954, only over TLS
        # RFC 3461 (we honour NOTIFY/ORCPT/RET/ENVID), RFC 2034 (every reply has an enhanced code).
        lines += ["DSN", "ENHANCEDSTATUSCODES", "HELP"]
        self.reply("\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}")
        return Hello(arg, extended=True)

    def _noop(self, arg: str) -> None:
        self.reply(OK)

    def _rset(self, arg: str) -> Reset | None:
        if arg:
            raise _Refused("501 5.5.4 Syntax: RSET")
        target = self._sequence("RSET")
        if target is not None:
            self.phase = target
        self.smtputf8 = False
        self.reply(OK)
        return Reset()

    def _quit(self, arg: str) -> Quit:
        if arg:
            raise _Refused("501 5.5.4 Syntax: QUIT")
        self.reply(BYE)
        self.close()
        return Quit()

    def _help(self, arg: str) -> None:
        self.reply("250 2.0.0 Supported commands: " + " ".join(COMMANDS))

    def _vrfy(self, arg: str) -> None:
        if not arg:
            raise _Refused("501 5.5.4 Syntax: VRFY <address>")
        # RFC 5321 §3.5.3: 252 when we will not say whether a user exists.
        self.reply(CANNOT_VRFY if split_path(arg) is not None else NO_VRFY)

    def _expn(self, arg: str) -> None:
        self.reply(NO_EXPN)

    def _starttls(self, arg: str) -> StartTls:
        if arg:
            raise _Refused("501 5.5.4 Syntax: STARTTLS")
        if not self.settings.tls_available:
            raise _Refused(NO_TLS)
        if self.tls:
            raise _Refused(TLS_ACTIVE)
        self.reply(READY_FOR_TLS)
        self.mode = Mode.TLS
        self._buffer.clear()  # RFC 3207 §4.2: pipelined clear text after STARTTLS is dropped
        return StartTls()

    def _syntax(self, verb: str) -> str:
        keyword = "FROM" if verb == "MAIL" else "TO"
        extra = " [SP <mail-parameters>]" if self.extended else ""
        return f"501 5.5.4 Syntax: {verb} {keyword}: <address>{extra}"

    def _path(self, verb: str, arg: str) -> tuple[Address, list[str]]:
        keyword = "FROM:" if verb == "MAIL" else "TO:"
        if not arg[: len(keyword)].upper() == keyword:
            raise _Refused(self._syntax(verb))
        parsed = split_path(arg[len(keyword):])
        if parsed is None:
            raise _Refused(MALFORMED_ADDRESS)
        address, params = parsed
        if params and not self.extended:
            raise _Refused(self._syntax(verb))  # RFC 5321 §4.1.1.11: parameters need EHLO
        return address, params.split()

    def _mail(self, arg: str) -> MailFrom:
        target = self._sequence("MAIL")
        sender, params = self._path("MAIL", arg)
        options, dsn = [], {}
        body_seen = smtputf8 = False
        for token in params:
            key, equals, value = token.partition("=")
            key = key.upper()
            if key in ("RET", "ENVID") and key not in dsn and dsn_param_valid(key, value):
                dsn[key] = value.upper() if key == "RET" else value
                continue
            if key == "BODY" and not body_seen:
                if value.upper() not in ("7BIT", "8BITMIME"):
                    raise _Refused(BODY_VALUES)
                body_seen = True
            elif key == "SMTPUTF8" and not smtputf8:
                if equals:
                    raise _Refused(SMTPUTF8_NO_VALUE)
                if not self.settings.smtputf8:
                    raise _Refused(NO_SMTPUTF8)
                smtputf8 = True
            elif key == "SIZE" and equals:
                if not value.isdigit():
                    raise _Refused(self._syntax("MAIL"))
                limit = self.settings.max_message_size
                if limit and int(value) > limit:
                    raise _Refused(MESSAGE_TOO_BIG)
            else:
                raise _Refused(MAIL_PARAMETERS)
            options.append(token.upper())
        self._pending_smtputf8 = smtputf8
        self._await("MAIL", target)
        return MailFrom(sender, tuple(options), ret=dsn.get("RET", ""), envid=dsn.get("ENVID", ""))

    def _rcpt(self, arg: str) -> RcptTo:
        target = self._sequence("RCPT")
        recipient, params = self._path("RCPT", arg)
        dsn: dict[str, str] = {}
        for token in params:
            key, _, value = token.partition("=")
            key = key.upper()
            if key in ("NOTIFY", "ORCPT") and key not in dsn and dsn_param_valid(key, value):
                dsn[key] = value.upper() if key == "NOTIFY" else value
            else:
                raise _Refused(RCPT_PARAMETERS)
        if recipient.is_null:
            raise _Refused(NULL_RECIPIENT)
        self._await("RCPT", target)
        notify = frozenset(dsn["NOTIFY"].split(",")) if "NOTIFY" in dsn else None
        return RcptTo(recipient, (), notify=notify, orcpt=dsn.get("ORCPT", ""))

    def _data_command(self, arg: str) -> DataStarted:
        self._sequence("DATA")
        if arg:
            raise _Refused("501 5.5.4 Syntax: DATA")
        self.reply(START_DATA)
        self.mode = Mode.DATA
        self._data_size, self._data_outcome, self._data_mid_line = 0, None, False
        self._data_blocks = []
        return DataStarted()

    # -- AUTH (RFC 4954) ---------------------------------------------------------------------------

    def _auth(self, arg: str) -> Authenticate | None:
        self.auth_attempted = True
        if not self.settings.auth_available:
            raise _Refused(NO_AUTH)
        if not self.tls:
            raise _Refused(AUTH_NEEDS_TLS)
        self._sequence("AUTH")
        if not self.extended:
            raise _Refused(NEED_EHLO)
        if self.authenticated:
            raise _Refused(ALREADY_AUTHENTICATED)
        if not arg:
            raise _Refused(NOT_ENOUGH_VALUE)
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if mechanism not in smtp_auth.MECHANISMS:
            raise _Refused(UNKNOWN_MECHANISM)
        self._auth_mechanism, self._auth_user = mechanism, None
        if not initial:
            self.reply("334 " if mechanism == "PLAIN" else f"334 {smtp_auth.LOGIN_USER_CHALLENGE}")
            self.mode = Mode.AUTH
            return None
        return self._auth_step(initial)

    def _auth_line(self) -> Event | _Sentinel | None:
        line = self._read_line(AUTH_LINE_LIMIT)
        if line is NEED_DATA:
            return self._end_of_input()
        self.mode = Mode.COMMAND
        if line is None:
            self.reply(LINE_TOO_LONG)
            return None
        assert isinstance(line, bytes)
        try:
            return self._auth_step(line.rstrip(b"\r\n").decode("ascii", "replace"))
        except _Refused as refused:
            self.reply(refused.reply)
            return None

    def _auth_step(self, response: str) -> Authenticate | None:
        try:
            decoded = smtp_auth.decode_response(response)
            if self._auth_mechanism == "PLAIN":
                credentials = smtp_auth.plain_credentials(decoded)
                return self._credentials(credentials.user, credentials.password)
            if self._auth_user is None:  # LOGIN: the user name, then the password
                self._auth_user = decoded
                self.reply(f"334 {smtp_auth.LOGIN_PASSWORD_CHALLENGE}")
                self.mode = Mode.AUTH
                return None
            return self._credentials(self._auth_user, decoded)
        except AuthSyntaxError as error:
            self.mode = Mode.COMMAND
            raise _Refused(error.reply) from None

    def _credentials(self, user: bytes, password: bytes) -> Authenticate:
        self._auth_user = None
        self._await("AUTH", None)
        return Authenticate(self._auth_mechanism, user, password)

    # -- DATA (RFC 5321 §4.1.1.4, §4.5.2) ----------------------------------------------------------

    def _data(self) -> Message | MessageRefused | Closed | _Sentinel:
        """Take every complete line received, in one block; stop at the final dot."""
        buffer = self._buffer
        while True:
            if self._data_mid_line:  # the rest of an overlong line: counted, never kept
                cut = buffer.find(b"\r\n")
                if cut < 0:
                    keep = 1 if buffer.endswith(b"\r") else 0  # may be the first half of the CRLF
                    self._data_size += len(buffer) - keep
                    del buffer[: len(buffer) - keep]
                    return self._data_input_end()
                self._data_size += cut + 2
                del buffer[: cut + 2]
                self._data_mid_line = False
            if buffer.startswith(b".\r\n"):
                del buffer[:3]
                return self._data_done()
            end = buffer.find(b"\r\n.\r\n")
            if end >= 0:
                self._data_feed(bytes(buffer[: end + 2]))
                del buffer[: end + 5]
                return self._data_done()
            last = buffer.rfind(b"\r\n")
            if last >= 0:
                self._data_feed(bytes(buffer[: last + 2]))
                del buffer[: last + 2]
            partial = len(buffer) - (1 if buffer.endswith(b"\r") else 0)
            if partial > TEXT_LINE_LIMIT - 2:  # this line is already too long, whatever follows
                self._data_refuse(DataOutcome.TOO_LONG)
                self._data_mid_line = True
                continue
            return self._data_input_end()

    def _data_input_end(self) -> Closed | _Sentinel:
        if self._eof:
            self.close()
            return Closed(in_data=True)
        return NEED_DATA

    def _data_feed(self, block: bytes) -> None:
        """Whole CRLF-terminated lines."""
        self._data_size += len(block)
        if self._data_outcome is not None:
            return
        if len(block) > TEXT_LINE_LIMIT - 2 and max(map(len, block.split(b"\r\n"))) > TEXT_LINE_LIMIT - 2:
            self._data_refuse(DataOutcome.TOO_LONG)
        elif self.settings.max_message_size and self._data_size > self.settings.max_message_size:
            self._data_refuse(DataOutcome.TOO_MUCH)
        else:
            self._data_blocks.append(block)

    def _data_refuse(self, outcome: DataOutcome) -> None:
        if self._data_outcome is None:
            self._data_outcome = outcome
            self._data_blocks = []

    def _data_done(self) -> Message | MessageRefused:
        self._await("DATA", Phase.GREETED)
        if self._data_outcome is not None:
            return MessageRefused(self._data_outcome)
        data = b"".join(self._data_blocks)
        self._data_blocks = []
        if data.startswith(b"."):
            data = data[1:]
        return Message(data.replace(b"\r\n.", b"\r\n"))


_HANDLERS = {
    "HELO": ServerProtocol._helo,
    "EHLO": ServerProtocol._ehlo,
    "NOOP": ServerProtocol._noop,
    "RSET": ServerProtocol._rset,
    "QUIT": ServerProtocol._quit,
    "HELP": ServerProtocol._help,
    "VRFY": ServerProtocol._vrfy,
    "EXPN": ServerProtocol._expn,
    "STARTTLS": ServerProtocol._starttls,
    "MAIL": ServerProtocol._mail,
    "RCPT": ServerProtocol._rcpt,
    "DATA": ServerProtocol._data_command,
    "AUTH": ServerProtocol._auth,
}
