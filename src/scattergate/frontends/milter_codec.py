"""The Sendmail milter protocol (version 6, as Postfix speaks it), sans IO.

Pure functions and one incremental decoder: bytes from the MTA become typed commands, typed
responses become bytes. No sockets here, so every corner of the wire format is testable (and
fuzzable) without an MTA. Our own code after reading the protocol's public descriptions.

Packet: uint32 length (big-endian, counting the command byte) | command byte | payload.
Strings in payloads end in NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

from scattergate.model import Reply

VERSION = 6
# Postfix sends body chunks of at most 64 KB; anything far beyond is not a milter peer.
MAX_PACKET = 1024 * 1024

# Actions we may ask for in option negotiation (SMFIF_*).
ACT_ADDHDRS = 0x01
ACT_CHGBODY = 0x02
ACT_ADDRCPT = 0x04
ACT_DELRCPT = 0x08
ACT_CHGHDRS = 0x10
ACT_QUARANTINE = 0x20
ACT_CHGFROM = 0x40
ACT_ADDRCPT_PAR = 0x80
ACT_SETSYMLIST = 0x100

# Protocol flags (SMFIP_*): steps the MTA may skip, and steps that need no reply.
P_NOCONNECT = 0x01
P_NOHELO = 0x02
P_NOMAIL = 0x04
P_NORCPT = 0x08
P_NOBODY = 0x10
P_NOHDRS = 0x20
P_NOEOH = 0x40
P_NR_HDR = 0x80
P_NOUNKNOWN = 0x100
P_NODATA = 0x200
P_SKIP = 0x400
P_RCPT_REJ = 0x800
P_NR_CONN = 0x1000
P_NR_HELO = 0x2000
P_NR_MAIL = 0x4000
P_NR_RCPT = 0x8000
P_NR_DATA = 0x10000
P_NR_UNKN = 0x20000
P_NR_EOH = 0x40000
P_NR_BODY = 0x80000
P_HDR_LEADSPC = 0x100000

# Macro stages for the symbol lists of the negotiation reply.
STAGE_CONNECT, STAGE_HELO, STAGE_MAIL, STAGE_RCPT, STAGE_DATA, STAGE_EOM, STAGE_EOH = range(7)


class MilterProtocolError(ValueError):
    """The peer sent something that is not the milter protocol: close the connection."""


# -- commands (MTA → milter) -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptNeg:
    version: int
    actions: int
    protocol: int


@dataclass(frozen=True, slots=True)
class Macros:
    command: str  # the command these macros belong to ('C', 'H', 'M', 'R', 'T', 'N', 'E')
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Connect:
    hostname: str
    family: str  # '4', '6', 'L' (unix socket) or 'U' (unknown)
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class Helo:
    name: str


@dataclass(frozen=True, slots=True)
class Mail:
    path: str  # "<user@domain>" as the client gave it (Postfix passes it bracketed)
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rcpt:
    path: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True, slots=True)
class Body:
    chunk: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    chunk: bytes = b""  # libmilter allows a last body chunk here; Postfix sends none


@dataclass(frozen=True, slots=True)
class Abort:
    """The transaction ends without a message (RSET, or a reject elsewhere)."""


@dataclass(frozen=True, slots=True)
class Quit:
    new_connection: bool = False  # 'K': the MTA reuses this milter connection for a new client


@dataclass(frozen=True, slots=True)
class Unknown:
    command: str


Command = Union[OptNeg, Macros, Connect, Helo, Mail, Rcpt, Data, Header, EndOfHeaders, Body,
                EndOfMessage, Abort, Quit, Unknown]


def _text(raw: bytes) -> str:
    # Header values and addresses may carry 8-bit data (SMTPUTF8 or plain junk): keep it.
    return raw.decode("utf-8", "surrogateescape")


def _strings(payload: bytes) -> list[str]:
    """NUL-terminated strings; a missing final NUL is tolerated (some MTAs omit it)."""
    if not payload:
        return []
    if payload.endswith(b"\0"):
        payload = payload[:-1]
    return [_text(p) for p in payload.split(b"\0")]


def decode_packet(command: int, payload: bytes) -> Command:
    """One packet (command byte and payload) → a typed command. Raises MilterProtocolError."""
    code = chr(command)
    # Macros, header and body packets first: they are most of a message's packets.
    if code == "D":
        if not payload:
            raise MilterProtocolError("macro packet without command")
        if len(payload) == 1:  # an empty list: Postfix sends one before nearly every step
            return _EMPTY_MACROS.get(payload[0]) or Macros(chr(payload[0]), {})
        items = _strings(payload[1:])
        if len(items) % 2:
            items.append("")  # a name without its value: keep the name
        values = {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        return Macros(chr(payload[0]), values)
    if code == "L":
        parts = _strings(payload)
        if len(parts) != 2:
            raise MilterProtocolError("malformed header")
        return Header(parts[0], parts[1])
    if code == "B":
        return Body(payload)
    if code == "O":
        if len(payload) < 12:
            raise MilterProtocolError("short option negotiation")
        version, actions, protocol = struct.unpack("!III", payload[:12])
        return OptNeg(version, actions, protocol)
    if code == "C":
        host, nul, rest = payload.partition(b"\0")
        if not nul or not rest:
            raise MilterProtocolError("malformed connect")
        family = chr(rest[0])
        if family == "U":
            return Connect(_text(host), family, 0, "")
        if len(rest) < 3:
            raise MilterProtocolError("malformed connect address")
        (port,) = struct.unpack("!H", rest[1:3])
        address = rest[3:]
        if address.endswith(b"\0"):
            address = address[:-1]
        return Connect(_text(host), family, port, _text(address))
    if code == "H":
        return Helo(next(iter(_strings(payload)), ""))
    if code in "MR":
        args = _strings(payload)
        if not args:
            raise MilterProtocolError(f"{'MAIL' if code == 'M' else 'RCPT'} without an address")
        cls = Mail if code == "M" else Rcpt
        return cls(args[0], tuple(a for a in args[1:] if a))
    if code == "T":
        return _DATA
    if code == "N":
        return _END_OF_HEADERS
    if code == "E":
        return EndOfMessage(payload) if payload else _END_OF_MESSAGE
    if code == "A":
        return _ABORT
    if code == "Q":
        return _QUIT
    if code == "K":
        return _QUIT_NEW
    if code == "U":
        return Unknown(next(iter(_strings(payload)), ""))
    raise MilterProtocolError(f"unknown milter command {command:#04x}")


_LENGTH = struct.Struct("!I")
# The empty macro packet of each stage, built once and shared (11 a message from Postfix):
# whoever reads a Macros command never changes its values.
_EMPTY_MACROS = {ord(stage): Macros(stage, {}) for stage in "CHMRTLNBEU"}
# Commands without data (or with only an immutable value) are built once.
_DATA, _END_OF_HEADERS, _END_OF_MESSAGE, _ABORT = Data(), EndOfHeaders(), EndOfMessage(), Abort()
_QUIT, _QUIT_NEW = Quit(), Quit(new_connection=True)


class Decoder:
    """Incremental: feed() whatever arrived, get every complete command back, in order."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet

    def feed(self, data: bytes) -> list[Command]:
        # Packets are cut straight from what arrived (one copy of each payload); only a packet
        # cut short by the read waits in the buffer for the rest.
        if self._buffer:
            buffer = self._buffer
            buffer += data
            if len(buffer) >= 4:
                (length,) = _LENGTH.unpack_from(buffer)
                if 0 < length <= self._max and len(buffer) - 4 < length:
                    return []  # the packet is still incomplete: no copy of what we hold
            data = bytes(buffer)
            buffer.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        commands: list[Command] = []
        end = len(data)
        offset = 0
        try:
            while end - offset >= 4:
                (length,) = _LENGTH.unpack_from(data, offset)
                if length == 0 or length > self._max:
                    raise MilterProtocolError(f"bad packet length {length}")
                start = offset + 4
                if end - start < length:
                    break
                commands.append(decode_packet(data[start], data[start + 1:start + length]))
                offset = start + length
        except MilterProtocolError:
            self._buffer += data[offset:]  # as it was: the bad packet is still there
            raise
        if offset < end:
            self._buffer += data[offset:]
        return commands


# -- responses (milter → MTA) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OptNegReply:
    actions: int
    protocol: int
    # Per macro stage, the macro names we want (replaces the MTA's defaults for that stage).
    macros: dict[int, str] = field(default_factory=dict)
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Continue:
    pass


@dataclass(frozen=True, slots=True)
class AcceptMessage:
    """Accept, and send us nothing more for this message."""


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class RejectReply:
    """A permanent refusal with our own reply text; only a 5xx reply fits."""

    reply: Reply

    def __post_init__(self) -> None:
        self.reply.require_class(5, "a milter reject")


@dataclass(frozen=True, slots=True)
class TempfailReply:
    """A temporary refusal with our own reply text; only a 4xx reply fits."""

    reply: Reply

    def __post_init__(self) -> None:
        self.reply.require_class(4, "a milter tempfail")


@dataclass(frozen=True, slots=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    recipient: str  # "<user@domain>"


@dataclass(frozen=True, slots=True)
class AddRecipient:
    recipient: str
    options: tuple[str, ...] = ()  # ESMTP parameters (needs ACT_ADDRCPT_PAR), e.g. NOTIFY=NEVER


@dataclass(frozen=True, slots=True)
class ChangeSender:
    sender: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QuarantineMessage:
    """Postfix: put the message on hold (the reason is logged only)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Progress:
    pass


Response = Union[OptNegReply, Continue, AcceptMessage, Discard, RejectReply, TempfailReply, AddHeader,
                 InsertHeader, DeleteRecipient, AddRecipient, ChangeSender, QuarantineMessage, Progress]


def _frame(code: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload) + 1) + code + payload


def _z(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError("NUL in a milter string")
    return data + b"\0"


# What a header field name must not contain (it would end the name or the line early).
_UNSAFE_IN_NAME = frozenset(":\r\n\0 ")


def _header(name: str, value: str) -> bytes:
    if not name or not _UNSAFE_IN_NAME.isdisjoint(name) or "\r" in value or "\n" in value:
        raise ValueError(f"unsafe header field {name!r}")
    return _z(name) + _z(value)


def encode(response: Response) -> bytes:
    """One typed response → one framed packet."""
    match response:
        case OptNegReply(actions, protocol, macros, version):
            lists = b"".join(struct.pack("!I", stage) + _z(names) for stage, names in sorted(macros.items()))
            return _frame(b"O", struct.pack("!III", version, actions, protocol) + lists)
        case Continue():
            return _frame(b"c")
        case AcceptMessage():
            return _frame(b"a")
        case Discard():
            return _frame(b"d")
        case RejectReply(reply) | TempfailReply(reply):
            # libmilter treats the text as a format string: a lone '%' must be doubled.
            return _frame(b"y", _z(str(reply).replace("%", "%%")))
        case AddHeader(name, value):
            return _frame(b"h", _header(name, value))
        case InsertHeader(index, name, value):
            return _frame(b"i", struct.pack("!I", index) + _header(name, value))
        case DeleteRecipient(recipient):
            return _frame(b"-", _z(recipient))
        case AddRecipient(recipient, ()):
            return _frame(b"+", _z(recipient))
        case AddRecipient(recipient, options):
            return _frame(b"2", _z(recipient) + _z(" ".join(options)))
        case ChangeSender(sender, options):
            return _frame(b"e", _z(sender) + (_z(" ".join(options)) if options else b""))
        case QuarantineMessage(reason):
            return _frame(b"q", _z(reason or "held"))
        case Progress():
            return _frame(b"p")
    raise TypeError(f"not a milter response: {response!r}")


def refusal(reply: Reply) -> RejectReply | TempfailReply:
    """The typed refusal for a 4xx or 5xx reply."""
    return RejectReply(reply) if reply.code >= 500 else TempfailReply(reply)


# -- the MTA's side, for tests, benchmarks and tools that drive a milter ------------------------

def _command_payload(command: Command) -> tuple[bytes, bytes]:
    match command:
        case OptNeg(version, actions, protocol):
            return b"O", struct.pack("!III", version, actions, protocol)
        case Macros(code, values):
            return b"D", code.encode()[:1] + b"".join(_z(k) + _z(v) for k, v in values.items())
        case Connect(hostname, "U", _, _):
            return b"C", _z(hostname) + b"U"
        case Connect(hostname, family, port, address):
            return b"C", _z(hostname) + family.encode()[:1] + struct.pack("!H", port) + _z(address)
        case Helo(name):
            return b"H", _z(name)
        case Mail(path, options):
            return b"M", _z(path) + b"".join(_z(o) for o in options)
        case Rcpt(path, options):
            return b"R", _z(path) + b"".join(_z(o) for o in options)
        case Data():
            return b"T", b""
        case Header(name, value):
            return b"L", _z(name) + _z(value)
        case EndOfHeaders():
            return b"N", b""
        case Body(chunk):
            return b"B", chunk
        case EndOfMessage(chunk):
            return b"E", chunk
        case Abort():
            return b"A", b""
        case Quit(new_connection):
            return (b"K" if new_connection else b"Q"), b""
        case Unknown(text):
            return b"U", _z(text)
    raise TypeError(f"not a milter command: {command!r}")


def encode_command(command: Command) -> bytes:
    code, payload = _command_payload(command)
    return _frame(code, payload)


def decode_response(data: bytes) -> tuple[str, bytes]:
    """(response code, payload) of one framed response packet: for tests and tools."""
    (length,) = struct.unpack_from("!I", data)
    return chr(data[4]), bytes(data[5:4 + length])
