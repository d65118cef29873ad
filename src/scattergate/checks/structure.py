"""Message structure limits at end of DATA: header size, MIME nesting, NUL characters.

Whatever we accept is passed on unchanged, so a message beyond a limit is refused whole (in
the dialogue: the sender learns of it, nobody bounces), never truncated or repaired.

Each check has a fast path in C (`bytes.find`, `in`, `count`) that decides ordinary mail in
microseconds; only a message that could exceed a limit gets the slower exact measure.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from typing import Iterator

from scattergate.checks import CheckContext
from scattergate.model import Finding

# A boundary parameter (RFC 2046 §5.1.1: at most 70 characters; we take more, to be safe),
# matched in the lower-cased message: the parameter name is case-insensitive.
_DECLARATION = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
# A close-delimiter line, "--boundary--", with the transport padding RFC 2046 allows.
_CLOSE = re.compile(rb"^--([^\r\n]{1,200})--[ \t]*\r?$", re.MULTILINE)


def header_section_size(content: bytes, limit: int) -> int | None:
    """Size of the header section if it is larger than `limit`, else None.

    The size counts the CRLF of the last field, not the blank line. Searches at most
    limit + 2 bytes, so a 25 MB message with a small header costs nothing."""
    if content.startswith(b"\r\n"):
        return None  # no header fields at all
    if content.find(b"\r\n\r\n", 0, limit + 2) >= 0:
        return None  # the header section (up to its final CRLF) is within the limit
    if len(content) <= limit:
        return None  # no body, and the whole message fits
    full = content.find(b"\r\n\r\n")
    return len(content) if full < 0 else full + 2


def mime_depth(content: bytes, limit: int) -> int:
    """How deep multipart bodies nest, exactly enough to compare with `limit`.

    Fast path: a multipart level needs a delimiter line ("--boundary") to open its first part,
    so a message with no more such lines than `limit` cannot nest deeper. Otherwise count the
    boundaries declared and not yet closed, in document order (stops once past the limit).
    An unclosed boundary stays open: malformed nesting counts as deep."""
    lines = content.count(b"\n--") + content.startswith(b"--")
    if lines <= limit:
        return lines
    lowered = content.lower()
    opened: Counter[bytes] = Counter()
    depth = deepest = 0
    for _, kind, boundary in heapq.merge(_declarations(lowered), _closings(lowered)):
        if kind == 0:
            opened[boundary] += 1
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif opened[boundary] > 0:
            opened[boundary] -= 1
            depth -= 1
    return deepest


def _declarations(lowered: bytes) -> Iterator[tuple[int, int, bytes]]:
    for match in _DECLARATION.finditer(lowered):
        yield match.start(), 0, match.group(1) or match.group(2)


def _closings(lowered: bytes) -> Iterator[tuple[int, int, bytes]]:
    for match in _CLOSE.finditer(lowered):
        yield match.start(), 1, match.group(1)


class MessageStructure:
    """Local DATA check: findings message.header_too_large, message.mime_too_deep, message.nul."""

    def __init__(self, max_header_size: int, max_mime_depth: int) -> None:
        self.max_header_size = max_header_size
        self.max_mime_depth = max_mime_depth

    def __call__(self, ctx: CheckContext) -> list[Finding]:
        content = ctx.content
        assert content is not None
        findings: list[Finding] = []
        size = header_section_size(content, self.max_header_size)
        if size is not None:
            findings.append(Finding("message", "header_too_large", f"{size} bytes, at most {self.max_header_size}"))
        if mime_depth(content, self.max_mime_depth) > self.max_mime_depth:
            findings.append(Finding("message", "mime_too_deep", f"more than {self.max_mime_depth} levels"))
        # RFC 5322 text excludes NUL, and 8BITMIME (RFC 6152) does too; many programs
        # downstream treat it as the end of a string, so it could hide content from a scanner.
        if b"\x00" in content:
            findings.append(Finding("message", "nul", "NUL character in message"))
        return findings
