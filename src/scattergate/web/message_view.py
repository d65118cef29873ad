"""A held message, made safe to show: its MIME parts listed and its text as plain text.

Nothing of the message is ever rendered: HTML parts are shown as their source, escaped by the
page; nothing is fetched (no images, no links followed; the page's Content-Security-Policy
forbids it anyway). Decoding never fails: an unknown charset or broken transfer encoding shows
replacement characters instead. Bounded: at most MAX_PARTS parts and MAX_TEXT characters.
"""

from __future__ import annotations

import codecs
import email.parser
import email.policy
from dataclasses import dataclass
from email.message import Message

MAX_PARTS = 100
MAX_TEXT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Part:
    content_type: str
    filename: str
    size: int  # decoded bytes
    shown: bool  # its text is in MessageView.text


@dataclass(frozen=True, slots=True)
class MessageView:
    parts: tuple[Part, ...]
    text: str
    truncated: bool


def _charset(part: Message) -> str:
    name = part.get_content_charset() or "us-ascii"
    try:
        codecs.lookup(name)
    except LookupError:
        return "utf-8"  # unknown: show what decodes, replacement characters for the rest
    return name


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a transfer encoding broken beyond what the parser forgives
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "replace") if isinstance(raw, str) else b""


def _leaves(part: Message) -> list[Message]:
    """The parts that carry content, in order. A delivery-status part is one leaf: the parser
    splits it into header blocks, which are its text (the per-recipient status of a bounce)."""
    if part.get_content_type() == "message/delivery-status" or not part.is_multipart():
        return [part]
    found: list[Message] = []
    for child in part.get_payload():
        if len(found) >= MAX_PARTS:
            break
        found.extend(_leaves(child))
    return found


def _delivery_status(part: Message) -> bytes:
    blocks = part.get_payload()
    if isinstance(blocks, list):
        return "\n".join(block.as_string() for block in blocks).encode("utf-8", "replace")
    return _payload(part)


def text_view(content: bytes) -> MessageView:
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(content)
    parts: list[Part] = []
    texts: list[str] = []
    plain_seen = False
    leaves = _leaves(message)[:MAX_PARTS]
    has_plain = any(p.get_content_type() == "text/plain" for p in leaves)
    for part in leaves:
        ctype = part.get_content_type()
        data = _delivery_status(part) if ctype == "message/delivery-status" else _payload(part)
        # Text parts are shown; HTML only when there is no plain text (as its escaped source).
        show = ctype == "text/plain" or (ctype == "text/html" and not has_plain) or (
            ctype.startswith("message/") or ctype == "text/rfc822-headers")
        if show:
            texts.append(data.decode(_charset(part), "replace"))
            plain_seen = True
        parts.append(Part(ctype, part.get_filename() or "", len(data), show))
    text = "\n\n".join(texts) if plain_seen else ""
    truncated = len(text) > MAX_TEXT
    return MessageView(tuple(parts), text[:MAX_TEXT], truncated)
