"""SMTP smuggling defence: refuse any bare CR or bare LF in the message.

A message whose lines end in anything but CRLF is exactly what the end-of-data ambiguities
(<LF>.<LF>, <CR>.<CR>, <LF>.<CR><LF>, ...) need to hide a second message inside the first;
refusing them means no downstream can ever disagree with us about where a message ends.
"""

from __future__ import annotations

from scattergate.checks import CheckContext
from scattergate.model import Finding


def has_bare_line_ending(data: bytes) -> bool:
    # Counting is done in C: every CR must start a CRLF and every LF must end one.
    crlf = data.count(b"\r\n")
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


def check_bare_line_endings(ctx: CheckContext) -> list[Finding]:
    assert ctx.content is not None
    if has_bare_line_ending(ctx.content):
        return [Finding("smtp", "bare_line_ending", "bare CR or LF in DATA")]
    return []
