"""SpamAssassin: the SPAMC/SPAMD protocol (spamd's own, as spoken by spamc).

Request:  "SYMBOLS SPAMC/1.5\\r\\n" "Content-length: N\\r\\n" "\\r\\n" then N bytes of message.
Reply:    "SPAMD/1.1 0 EX_OK\\r\\n" "Spam: True ; 6.2 / 5.0\\r\\n" ... "\\r\\n" "RULE_A,RULE_B"
          (a code other than 0 is an error: "SPAMD/1.0 76 Bad header line: ..."); spamd closes
          the connection after the reply.

We use SYMBOLS rather than CHECK: the same score, plus the rule names for the log line and the
X-Spam-Status header. Our thresholds (tag_score, reject_score) decide, not spamd's own
required_score, so one config file holds the whole policy. Why our own client: the PyPI
clients are blocking or unmaintained, and the protocol is a handful of header lines.

spamd sees the message as it will be delivered: we prepend a Return-Path and a Received line
for the client (as amavisd does), so SpamAssassin's relay and envelope rules have something to
look at. Messages above max_size (512 KiB by default, like spamc's own limit) are not sent at
all: spam is small, and SpamAssassin's time grows with size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from scattergate.checks import CheckContext
from scattergate.checks.scanners import (
    ScanError,
    connect,
    format_detail,
    oversize,
    parse_address,
    read_to_eof,
    symbol_list,
    write_all,
)
from scattergate.model import Finding, header_date

if TYPE_CHECKING:
    from scattergate.config import SpamdConfig

_SPAM_HEADER = re.compile(r"^(True|False|Yes|No)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class SpamdResult:
    score: float
    required: float  # spamd's own threshold; logged, not used to decide
    symbols: tuple[str, ...]


def encode_request(length: int, command: str = "SYMBOLS") -> bytes:
    return f"{command} SPAMC/1.5\r\nContent-length: {length}\r\n\r\n".encode("ascii")


def parse_reply(raw: bytes) -> SpamdResult:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/") or not status[1].isdigit():
        raise ScanError(f"unexpected spamd reply {lines[0][:60]!r}")
    if status[1] != "0":
        raise ScanError(f"spamd error {status[1]}: {(status[2] if len(status) > 2 else '').strip()[:80]}")
    if not sep:
        raise ScanError("spamd reply ended inside its headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ScanError(f"bad spamd header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    match = _SPAM_HEADER.match(headers.get("spam", ""))
    if match is None:
        raise ScanError("spamd reply without a valid Spam: header")
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) != len(body)):
        raise ScanError("spamd reply body does not match its Content-length")
    symbols = tuple(s.strip() for s in body.decode("latin-1").strip().split(",") if s.strip())
    return SpamdResult(float(match.group(2)), float(match.group(3)), symbols)


def trace_headers(ctx: CheckContext, hostname: str) -> bytes:
    """Return-Path and Received for the client, as our delivery will add them."""
    session, envelope = ctx.session, ctx.envelope
    helo = "".join(c for c in session.helo if c.isprintable() and c not in "()\\")[:100] or "unknown"
    sender = "".join(c for c in str(envelope.sender) if c.isprintable()) if envelope else ""
    message_id = envelope.message_id if envelope else "-"
    return (
        f"Return-Path: <{sender}>\r\n"
        f"Received: from {helo} ([{session.client_ip}])\r\n\tby {hostname} (scattergate)"
        f" with {'ESMTP' if session.esmtp else 'SMTP'} id {message_id};\r\n\t{header_date()}\r\n"
    ).encode("utf-8", "surrogateescape")


class SpamdScanner:
    def __init__(self, settings: "SpamdConfig", hostname: str) -> None:
        self.address = parse_address(settings.address, "scan.spamd.address")
        self.settings = settings
        self.hostname = hostname

    def classify(self, result: SpamdResult) -> Finding:
        tag, reject = self.settings.tag_score, self.settings.reject_score
        verdict = "spam" if result.score >= reject else "tagged" if result.score >= tag else "ham"
        detail = format_detail({
            "required": f"{tag:g}", "reject": f"{reject:g}", "spamd_required": f"{result.required:g}",
            "tests": symbol_list(result.symbols),
        })
        return Finding("spamd", verdict, detail, result.score)

    async def scan(self, ctx: CheckContext) -> Sequence[Finding]:
        content = memoryview(ctx.content or b"")
        if len(content) > self.settings.max_size:
            return [oversize("spamd", len(content), self.settings.max_size)]
        trace = trace_headers(ctx, self.hostname)
        async with connect(self.address) as (reader, writer):
            writer.write(encode_request(len(trace) + len(content)))
            writer.write(trace)
            await write_all(writer, content)
            raw = await read_to_eof(reader)
        return [self.classify(parse_reply(raw))]
