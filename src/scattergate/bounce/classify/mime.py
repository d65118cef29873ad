"""Tolerant, bounded MIME reading for the bounce classifier.

Everything here must survive hostile input: broken boundaries, CR-only line ends, 8-bit junk,
huge bodies and absurd nesting. Work is bounded by byte, part and depth caps so that a single
message can never cost more than a few milliseconds of parsing beyond the cap size.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

from .rules import ORIGINAL_MARKER

# Bounces put their verdict near the top and attach (usually truncated) originals; 1 MiB is
# far more than any MTA report needs, and caps parse time on a 50 MB attachment.
MAX_BYTES = 1 << 20
MAX_PARTS = 64  # MIME parts examined, in document order
MAX_DEPTH = 12  # nesting depth we descend into; real reports are 3-4 deep
MAX_TEXT_PER_PART = 64 * 1024
MAX_TEXT_TOTAL = 192 * 1024
# The stdlib parser recurses once per multipart level; deeper input is parsed headers-only.
_MAX_BOUNDARIES = 60
# Attribute holding a message's field index (lower-case name -> first (name, raw value)).
_INDEX = "_classify_first"


@dataclass(slots=True)
class Parsed:
    """What the classifier needs from one message, already decoded and bounded."""

    top: Message
    # Text of the report itself (text/* parts outside any attached message), in order.
    texts: list[str] = field(default_factory=list)
    # Header blocks of attached originals: message/rfc822, text/rfc822-headers, message/global.
    originals: list[Message] = field(default_factory=list)
    # Raw field blocks of message/delivery-status (or global-delivery-status) parts.
    dsn_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    feedback_blocks: list[list[tuple[str, str]]] = field(default_factory=list)
    mdn_parts: int = 0
    attached: bool = False  # an original came as a MIME part (not merely copied inline)
    content_types: list[str] = field(default_factory=list)


def normalise(raw: bytes | str) -> bytes:
    """Bound the input and turn CRLF / CR-only line ends into LF."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    data = bytes(raw[:MAX_BYTES])
    if b"\r" in data:
        # The same bytes as data.replace(b"\r\n", b"\n"), which searches for a two-byte
        # pattern in Python 3.11 at half the speed of split and join (~5 µs on a 5 KB message).
        data = b"\n".join(data.split(b"\r\n"))
        if b"\r" in data:  # CR-only line ends are rare: skip the second pass over the bytes
            data = data.replace(b"\r", b"\n")
    return data


def parse(data: bytes) -> Message:
    """Parse without ever raising; pathological nesting degrades to a headers-only parse."""
    try:
        if data.count(b"boundary") > _MAX_BOUNDARIES:
            raise RecursionError("too many nested multiparts")
        simple = _parse_single_part(data)
        if simple is not None:
            return simple
        return email.message_from_bytes(data, policy=email.policy.compat32)
    except Exception:
        head, _, body = data.partition(b"\n\n")
        try:
            msg = email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
        except Exception:
            msg = Message()
        # Keep the body as opaque text so phrase rules still see it; collect() reads a
        # non-multipart top part as text whatever its declared type.
        msg.set_payload(body.decode("latin-1"))
        return msg


def _parse_single_part(data: bytes) -> Message | None:
    """The same Message the full parse builds, for a message that is not multipart/* or message/*.

    The stdlib parser feeds the body of a single-part message line by line through Python code
    only to join it back unchanged; most ordinary mail is single-part, so parse the header block
    alone and attach the body as the parser would (ASCII + surrogateescape). Anything unusual in
    the header block (a defect, a line the parser does not take as a header) → None: full parse.
    """
    end = data.find(b"\n\n")
    if end < 0:
        return None
    msg = _plain_header_block(data[:end + 1].decode("ascii", "surrogateescape"))
    if msg is None:
        msg = email.message_from_bytes(data[:end + 2], policy=email.policy.compat32)
        if msg.defects or msg.get_payload() != "":
            return None
    if _content_type(msg).partition("/")[0] in ("multipart", "message"):
        return None
    msg.set_payload(data[end + 2:].decode("ascii", "surrogateescape"))
    return msg


# One header field as email's feed parser reads it (compat32): the name runs to the first colon
# (RFC 5322 ftext only), the value starts after the blanks that follow it and keeps its
# continuation lines as they are, without the final line end.
# (`.` stops at a newline like [^\n], but `re` runs it in a tighter loop.)
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):[ \t]*(.*(?:\n[ \t].*)*)\n")


def _plain_header_block(head: str) -> Message | None:
    """The Message email's parser builds from `head` (header lines, each ending in "\n"), for a
    block of plain fields optionally led by an mbox "From " line; None for anything else.

    Reading the fields with one pattern costs a fraction of the parser's line-by-line Python;
    whatever the parser would treat specially (a defect, a line that is no field, a CR) is left
    to it. The header index that header() builds is filled on the way.
    """
    if "\r" in head:
        return None
    msg = Message(policy=email.policy.compat32)
    pos = 0
    if head.startswith("From "):
        pos = head.index("\n") + 1
        msg.set_unixfrom(head[:pos - 1])
    index: dict[str, tuple[str, object]] = {}
    set_raw = msg.set_raw
    for m in _FIELD.finditer(head, pos):
        if m.start() != pos:
            return None
        name, value = m.groups()
        set_raw(name, value)
        index.setdefault(name.lower(), (name, value))
        pos = m.end()
    if pos != len(head):
        return None
    msg.__dict__[_INDEX] = index
    return msg


def _field_index(msg: Message) -> dict[str, tuple[str, object]]:
    """The message's fields by lower-case name, first of each name: built once per message."""
    index: dict[str, tuple[str, object]] | None = msg.__dict__.get(_INDEX)
    if index is None:
        index = {}
        for key, raw in msg.raw_items():
            index.setdefault(key.lower(), (key, raw))
        msg.__dict__[_INDEX] = index
    return index


def header(msg: Message, name: str) -> str:
    """One header as clean text: RFC 2047 decoded, unfolded, junk bytes replaced.

    Same value as msg.get(name) (the first field of that name), but the classifier asks a
    message for ~30 names: index the fields once instead of scanning them per name.
    """
    try:
        found = _field_index(msg).get(name.lower())
        if found is None:
            return ""
        value = msg.policy.header_fetch_parse(*found)
    except Exception:
        return ""
    return _clean_header(value)


def has_field(msg: Message, names: frozenset[str]) -> bool:
    """Whether the message has a field with any of these (lower-case) names: lets the caller skip
    a run of header() calls that would all return ""."""
    try:
        return not _field_index(msg).keys().isdisjoint(names)
    except Exception:
        return True  # unknown: let header() answer name by name


def headers(msg: Message, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    return [_clean_header(v) for v in values]


def _clean_header(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        # compat32 wraps raw 8-bit headers; str() would turn them into U+FFFD.
        try:
            text = "".join(_chunk(b, cs) for b, cs in email.header.decode_header(value))
        except Exception:
            text = str(value)
        return " ".join(text.split())
    text = str(value)
    if "=?" in text:
        try:
            text = str(email.header.make_header(email.header.decode_header(text)))
        except Exception:
            pass
    if not text.isascii():  # an ASCII text comes back unchanged from this round trip
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split())


def _chunk(data: bytes | str, charset: str | None) -> str:
    if isinstance(data, str):
        return data
    for cs in (charset if charset and charset != "unknown-8bit" else "utf-8", "utf-8"):
        try:
            return data.decode(cs)
        except (LookupError, UnicodeDecodeError):
            continue
    return data.decode("latin-1")


def content_type(msg: Message) -> str:
    try:
        return _content_type(msg)
    except Exception:
        return "text/plain"


def _content_type(msg: Message) -> str:
    """msg.get_content_type().lower() from the field index (Message.get scans every field)."""
    found = _field_index(msg).get("content-type")
    if found is None:
        return msg.get_default_type().lower()
    ctype = str(msg.policy.header_fetch_parse(*found)).partition(";")[0].strip().lower()
    return ctype if ctype.count("/") == 1 else "text/plain"


def param(msg: Message, name: str) -> str:
    try:
        value = _plain_param(msg, name)
        if isinstance(value, _NotPlain):
            value = msg.get_param(name)
    except Exception:
        return ""
    if isinstance(value, tuple):  # RFC 2231 triple
        value = value[2]
    return str(value or "").strip().lower()


class _NotPlain:
    """_plain_param's answer for a value it does not read: ask Message.get_param."""


_NOT_PLAIN = _NotPlain()
# Characters that give a Content-Type parameter list more than a plain reading: quoting,
# quoted pairs, <...> values, RFC 2231 names.
_PARAM_SPECIALS = re.compile(r'["\\<>*]')


def _plain_param(msg: Message, name: str) -> str | None | _NotPlain:
    """msg.get_param(name) (name in lower case) for a Content-Type without quoting or RFC 2231
    syntax, read from the field index; _NOT_PLAIN for any other value.

    get_param scans the fields twice and runs the full RFC 2231 machinery, which for such a
    value comes down to: the first ";"-separated piece whose name (before any "=") is `name`,
    its value stripped ("" for a bare name).
    """
    found = _field_index(msg).get("content-type")
    if found is None:
        return None
    value = found[1]
    if not isinstance(value, str) or not value.isascii() or _PARAM_SPECIALS.search(value):
        return _NOT_PLAIN
    for piece in value.split(";"):
        key, _, val = piece.partition("=")
        if key.strip().lower() == name:
            return val.strip()
    return None


# Charsets under which ASCII bytes decode to the same characters (the usual ones for plain mail).
_ASCII_CHARSETS = frozenset({"", "utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "windows-1252"})
# Transfer encodings under which get_payload(decode=True) returns the payload's bytes unchanged.
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


def _ascii_text(part: Message) -> str | None:
    """decode_text's result before capping, for an ASCII payload held as text and not transfer-
    encoded, in an ASCII-compatible charset; None for anything else.

    Then get_payload(decode=True) only encodes the text to ASCII bytes and decode_text decodes
    them back: the same characters. Most single-part mail is such a part (~2 µs for 5 KB).
    """
    raw = part.get_payload()
    if not isinstance(raw, str) or not raw.isascii():
        return None
    cte = _field_index(part).get("content-transfer-encoding")
    if cte is not None and str(part.policy.header_fetch_parse(*cte)).lower() not in _IDENTITY_ENCODINGS:
        return None
    if param(part, "charset") not in _ASCII_CHARSETS:
        return None
    return raw


def decode_text(part: Message, limit: int = MAX_TEXT_PER_PART) -> str:
    """Decoded text of a non-multipart part, capped; never raises."""
    try:
        text = _ascii_text(part)
    except Exception:
        text = None
    if text is not None:
        text = text[: limit * 2]
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text[:limit]
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        try:
            raw = part.get_payload()
        except Exception:
            return ""
        if not isinstance(raw, str):
            return ""
        payload = raw.encode("utf-8", "surrogateescape")
    payload = payload[: limit * 2]
    charset = param(part, "charset") or "utf-8"
    for cs in (charset, "utf-8"):
        try:
            text = payload.decode(cs)
            break
        except (LookupError, UnicodeDecodeError):
            continue
    else:
        text = payload.decode("latin-1")
    if b"\r" in payload:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:limit]


_HEADER_LINE = re.compile(r"^[ \t>]{0,4}([A-Za-z][A-Za-z0-9-]{0,60}):")
_KEY_HEADERS = frozenset({"from", "to", "subject", "message-id", "date", "received", "return-path", "cc"})


# The lines _HEADER_LINE matches with a name in _KEY_HEADERS, found by one scan in C instead
# of one match per line in Python (most mail has none; this ran for every message).
# re.ASCII: under Unicode case folding 'ſ' would match 's' where [A-Za-z] does not.
_KEY_HEADER_LINE = re.compile(
    r"^[ \t>]{0,4}(?:" + "|".join(re.escape(name) for name in sorted(_KEY_HEADERS)) + r"):",
    re.MULTILINE | re.IGNORECASE | re.ASCII,
)
# The same lines found from the newline before them: a pattern opening with a literal lets `re`
# jump from newline to newline, where `^` would be tried at every character of the body.
_KEY_HEADER_AFTER_NEWLINE = re.compile("\n" + _KEY_HEADER_LINE.pattern.removeprefix("^"),
                                       re.IGNORECASE | re.ASCII)
_MAX_SCAN_LINES = 4000


def _key_header_lines(body: str) -> Iterator[int]:
    """Start offsets of the lines _KEY_HEADER_LINE matches, in order."""
    if ":" not in body:  # every such line has one; plain prose often has none
        return
    if _KEY_HEADER_LINE.match(body):
        yield 0
    for m in _KEY_HEADER_AFTER_NEWLINE.finditer(body):
        yield m.start() + 1


def split_original(body: str) -> tuple[str, Message | None]:
    """Split report text from an inline copy of the original (marker line or header block)."""
    lines: list[str] | None = None
    start = None
    line_no, counted_to = 0, 0
    for offset in _key_header_lines(body):
        line_no += body.count("\n", counted_to, offset)
        counted_to = offset
        if line_no >= _MAX_SCAN_LINES:
            break
        if lines is None:
            lines = body.split("\n")
        block = _header_run(lines, line_no)
        names = {n for n in block if n in _KEY_HEADERS}
        if len(names) >= 2 and len(block) >= 3:
            start = line_no
            break
    if start is None or lines is None:
        return body, None
    # The report text ends at the marker line just above the copy, if there is one.
    cut = start
    for j in range(start - 1, max(-1, start - 6), -1):
        if ORIGINAL_MARKER.match(lines[j]):
            cut = j
            break
    block_lines = lines[start:start + 400]
    indent = len(block_lines[0]) - len(block_lines[0].lstrip(" \t>"))
    text = "\n".join(line[indent:] if len(line) >= indent else line for line in block_lines)
    return "\n".join(lines[:cut]), header_block(text)


def _header_run(lines: list[str], i: int) -> list[str]:
    """Names of the consecutive header lines starting at i (continuations allowed)."""
    names: list[str] = []
    for line in lines[i:i + 200]:
        if not line.strip():
            break
        m = _HEADER_LINE.match(line)
        if m and not line[:1].isspace():
            names.append(m.group(1).lower())
        elif line[:1] in " \t" and names:
            continue
        elif m:
            names.append(m.group(1).lower())
        else:
            break
    return names



_TAG = re.compile(r"<[^>]{0,2000}>")
_BR = re.compile(r"<\s*(?:br|/p|/div|/tr|/li)\b[^>]{0,200}>", re.I)


def html_to_text(html: str) -> str:
    import html as html_mod  # local: only HTML-only bounces pay for it

    html = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", html)
    return html_mod.unescape(_TAG.sub(" ", _BR.sub("\n", html)))


def header_block(text: str) -> Message:
    """Parse a bare header block (text/rfc822-headers, inline copies) tolerantly."""
    try:
        return email.message_from_string(text.lstrip("\n") + "\n\n", policy=email.policy.compat32)
    except Exception:
        return Message()


def field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Split 'Name: value' field blocks (delivery-status / feedback-report) by blank lines."""
    blocks: list[list[tuple[str, str]]] = []
    cur: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = []
            continue
        if line[:1] in " \t" and cur:
            name, value = cur[-1]
            cur[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep and name.strip() and " " not in name.strip():
            cur.append((name.strip().lower(), value.strip()))
    if cur:
        blocks.append(cur)
    return blocks


def _msg_fields(msg: Message) -> list[tuple[str, str]]:
    try:
        return [(k.lower(), _clean_header(v)) for k, v in msg.items()]
    except Exception:
        return []


def _report_blocks(part: Message) -> list[list[tuple[str, str]]]:
    """Field blocks of a delivery-status / feedback-report part, whether the parser split it or not."""
    try:
        payload = part.get_payload()
    except Exception:
        return []
    if isinstance(payload, list):
        blocks = [_msg_fields(m) for m in payload if isinstance(m, Message)]
        # compat32 leaves a block's own body text when a blank line is missing; read it too.
        for m in payload:
            if isinstance(m, Message) and isinstance(m.get_payload(), str) and m.get_payload().strip():
                blocks.extend(field_blocks(m.get_payload()))
        return [b for b in blocks if b]
    return field_blocks(decode_text(part))


def _attached(part: Message) -> Message | None:
    """The message inside a message/rfc822 part, or a header-only message for rfc822-headers."""
    try:
        payload = part.get_payload()
    except Exception:
        return None
    if isinstance(payload, list):
        inner = payload[0] if payload else None
        if isinstance(inner, Message):
            # Some MTAs base64 the attached message; the parser then leaves it unparsed.
            if not _looks_like_original(inner) and isinstance(inner.get_payload(), str):
                # Junk before the headers (blank line, broken folding): find the real block.
                _, found = split_original(inner.get_payload()[:MAX_TEXT_PER_PART])
                return found or inner
            return inner
        return None
    _, found = split_original(decode_text(part))
    return found or header_block(decode_text(part))


def _whole_message(text: str) -> bool:
    """Whether a text part opens with a message's header block (2+ of the key headers)."""
    head = text.lstrip("\n")
    if not _HEADER_LINE.match(head):
        return False
    return len(set(_header_run(head[:8192].split("\n"), 0)) & _KEY_HEADERS) >= 2


def _looks_like_original(part: Message) -> bool:
    try:
        names = {k.lower() for k in part.keys()}
    except Exception:
        return False
    return len(names & {"from", "to", "subject", "message-id", "date", "received", "return-path"}) >= 2


def collect(top: Message) -> Parsed:
    """Walk the MIME tree breadth-limited and depth-limited; sort parts into report roles."""
    out = Parsed(top=top)
    total_text = 0
    seen = 0
    # (part, depth, inside_attached_original)
    stack: list[tuple[Message, int, bool]] = [(top, 0, False)]
    while stack and seen < MAX_PARTS:
        part, depth, inside = stack.pop()
        seen += 1
        ctype = content_type(part)
        if not inside:
            out.content_types.append(ctype)
        if part.is_multipart() and ctype.startswith("multipart/"):
            if depth >= MAX_DEPTH:
                continue
            try:
                children = part.get_payload()
            except Exception:
                children = []
            if isinstance(children, list):
                for child in reversed(children[:MAX_PARTS]):
                    if isinstance(child, Message):
                        stack.append((child, depth + 1, inside))
            continue
        if inside:
            continue  # the original's own body is not evidence about the report
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            out.dsn_blocks.extend(_report_blocks(part))
        elif ctype == "message/feedback-report":
            out.feedback_blocks.extend(_report_blocks(part))
        elif ctype in ("message/disposition-notification", "message/global-disposition-notification"):
            out.mdn_parts += 1
        elif ctype in ("message/rfc822", "text/rfc822-headers", "message/global",
                       "message/global-headers", "message/partial", "message/rfc822-headers"):
            inner = _attached(part)
            if inner is not None and len(out.originals) < 4:
                out.originals.append(inner)
                out.attached = True
                # An original can itself be a report (DSN of an auto-reply): never descend.
        elif depth > 0 and _looks_like_original(part):
            # A part whose "MIME headers" are really the returned message's headers (the MTA
            # pasted the original right after the boundary); MIME part headers never carry these.
            if len(out.originals) < 4:
                out.originals.append(part)
        elif ctype.startswith(("text/", "multipart/")) or depth == 0:
            if total_text >= MAX_TEXT_TOTAL:
                continue
            text = decode_text(part, min(MAX_TEXT_PER_PART, MAX_TEXT_TOTAL - total_text))
            if ctype == "text/html":
                text = html_to_text(text)
            elif out.texts and depth > 0 and len(out.originals) < 4 and _whole_message(text):
                # A later text part that is a whole message (headers first): old MTAs and list
                # software return the original this way instead of as message/rfc822.
                out.originals.append(header_block(text.lstrip("\n")))
                out.attached = True
                continue
            total_text += len(text)
            out.texts.append(text)
    return out
