"""rspamd: its HTTP protocol, POST /checkv2 on the normal worker (port 11333 by default).

The envelope travels as request headers (IP, Helo, From, Rcpt per recipient, Queue-Id,
MTA-Name) so rspamd runs its own SPF, RBL, rate and per-recipient settings checks; the reply is
JSON with `action`, `score`, `required_score`, `symbols` and optional `messages.smtp_message`.

rspamd's action decides (its actions.conf holds the thresholds), mapped to findings:
  reject, discard               → rspamd.spam      (refused in the dialogue: never dropped later)
  add header, rewrite subject   → rspamd.tagged    (accepted with X-Spam-Flag)
  soft reject                   → rspamd.deferred  (451: rate limits, greylisting plugin)
  quarantine                    → rspamd.quarantine
  no action, greylist           → rspamd.ham       ("greylist" is only a score band: rspamd's
                                                    greylist plugin turns it into soft reject)
Why our own client: HTTP/1.1 with one request per connection is a few lines over an asyncio
stream; an HTTP library would add a dependency for no gain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from scattergate.checks import CheckContext
from scattergate.checks.scanners import (
    ScanError,
    SocketAddress,
    connect,
    format_detail,
    oversize,
    parse_address,
    read_to_eof,
    symbol_list,
    write_all,
)
from scattergate.model import Finding

if TYPE_CHECKING:
    from scattergate.config import RspamdConfig

ACTIONS = {
    "reject": "spam",
    "discard": "spam",
    "add header": "tagged",
    "rewrite subject": "tagged",
    "soft reject": "deferred",
    "quarantine": "quarantine",
    "no action": "ham",
    "greylist": "ham",
}


@dataclass(frozen=True, slots=True)
class RspamdResult:
    action: str
    score: float
    required: float
    symbols: tuple[str, ...]  # strongest first
    message: str = ""


def _header_value(text: str) -> str:
    # Client-supplied text (HELO) must not be able to add or split request headers.
    return "".join(c for c in text if c.isprintable())[:255]


def encode_request(
    length: int, *, host: str, ip: str, helo: str, sender: str, recipients: Sequence[str],
    queue_id: str, mta_name: str,
) -> bytes:
    lines = [
        "POST /checkv2 HTTP/1.1",
        f"Host: {host}",
        f"Content-Length: {length}",
        "Connection: close",
        f"IP: {_header_value(ip)}",
        f"Helo: {_header_value(helo) or 'unknown'}",
        f"From: {_header_value(sender) or '<>'}",
        *(f"Rcpt: {_header_value(r)}" for r in recipients),
        f"Queue-Id: {_header_value(queue_id)}",
        f"MTA-Name: {_header_value(mta_name)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def decode_chunked(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        if not sep or not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            raise ScanError("bad chunked encoding in rspamd reply")
        size = int(size_text, 16)
        if size == 0:
            return bytes(out)
        if len(rest) < size + 2:
            raise ScanError("rspamd reply ended inside a chunk")
        out += rest[:size]
        rest = rest[size + 2:]


def parse_response(raw: bytes) -> RspamdResult:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit():
        raise ScanError(f"unexpected rspamd reply {lines[0][:60]!r}")
    if status[1] != "200":
        raise ScanError(f"rspamd HTTP {status[1]} {(status[2] if len(status) > 2 else '').strip()[:60]}")
    if not sep:
        raise ScanError("rspamd reply ended inside its headers")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = decode_chunked(body)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or len(body) < int(length):
            raise ScanError("rspamd reply shorter than its Content-Length")
        body = body[: int(length)]
    try:
        data = json.loads(body)
    except ValueError:
        raise ScanError("rspamd reply is not JSON") from None
    return result_from_json(data)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScanError(f"rspamd reply without a numeric {name}")
    return float(value)


def result_from_json(data: Any) -> RspamdResult:
    if not isinstance(data, dict):
        raise ScanError("rspamd reply is not a JSON object")
    if "error" in data and "action" not in data:
        raise ScanError(f"rspamd error: {str(data['error'])[:80]}")
    action = data.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise ScanError(f"rspamd reply with unknown action {str(action)[:40]!r}")
    score = _number(data.get("score"), "score")
    required = _number(data.get("required_score", 0), "required_score")
    symbols = data.get("symbols") or {}
    ranked: list[tuple[float, str]] = []
    if isinstance(symbols, dict):
        for name, symbol in symbols.items():
            weight = symbol.get("score", 0) if isinstance(symbol, dict) else 0
            ranked.append((float(weight) if isinstance(weight, (int, float)) else 0.0, str(name)))
    ranked.sort(key=lambda pair: (-abs(pair[0]), pair[1]))
    messages = data.get("messages")
    message = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    return RspamdResult(action, score, required, tuple(n for _, n in ranked), " ".join(str(message).split())[:120])


class RspamdScanner:
    def __init__(self, settings: "RspamdConfig", hostname: str) -> None:
        self.address: SocketAddress = parse_address(settings.address, "scan.rspamd.address")
        self.max_size = settings.max_size
        self.hostname = hostname

    @staticmethod
    def classify(result: RspamdResult) -> Finding:
        detail = format_detail(
            {"action": result.action.replace(" ", "_"), "required": f"{result.required:g}",
             "tests": symbol_list(result.symbols)},
            result.message,
        )
        return Finding("rspamd", ACTIONS[result.action], detail, result.score)

    async def scan(self, ctx: CheckContext) -> Sequence[Finding]:
        content = memoryview(ctx.content or b"")
        if len(content) > self.max_size:
            return [oversize("rspamd", len(content), self.max_size)]
        envelope = ctx.envelope
        request = encode_request(
            len(content),
            host=f"[{self.address.host}]" if ":" in self.address.host else self.address.host or "localhost",
            ip=ctx.session.client_ip,
            helo=ctx.session.helo,
            sender=str(envelope.sender) if envelope else "",
            recipients=[str(r) for r in envelope.recipients] if envelope else [],
            queue_id=envelope.message_id if envelope else "",
            mta_name=self.hostname,
        )
        async with connect(self.address) as (reader, writer):
            writer.write(request)
            await write_all(writer, content)
            raw = await read_to_eof(reader)
        return [self.classify(parse_response(raw))]
