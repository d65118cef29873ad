"""Headers we add to accepted mail, rendered from the findings behind the verdict.

Checks never touch the message: they report findings, and each renderer here turns the
findings it understands into header fields (Authentication-Results from spf/dkim/dmarc,
X-Spam-* from the content scanners, ...). The renderers are chosen where the gateway is
assembled (assembly.py) and passed in: nothing registers itself by being imported.
"""

from __future__ import annotations

from typing import Callable, Sequence

from scattergate.checks.authresults import build, is_ours
from scattergate.model import Finding

# (authserv-id / our hostname, findings) -> [(name, value)]; values on one line, no CRLF.
HeaderRenderer = Callable[[str, Sequence[Finding]], list[tuple[str, str]]]


def render_headers(hostname: str, findings: Sequence[Finding],
                   renderers: Sequence[HeaderRenderer]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for renderer in renderers:
        for name, value in renderer(hostname, findings):
            # A header value with a line break could inject fields: fold it to one line.
            headers.append((name, " ".join(value.split())))
    return headers


def authentication_results(hostname: str, findings: Sequence[Finding]) -> list[tuple[str, str]]:
    """RFC 8601 Authentication-Results from the spf/dkim/dmarc findings, when there are any."""
    if not any(f.check in ("spf", "spf_helo", "dkim", "dmarc") for f in findings):
        return []
    return [("Authentication-Results", build(hostname, findings, linesep=None))]



def _drop_fields(content: bytes, hints: tuple[bytes, ...], drop: Callable[[bytes], bool]) -> bytes:
    """Remove the top-level header fields whose first line `drop` selects (with their
    continuation lines). `hints`: lower-case bytes one of which a dropped field must contain,
    so the common case (none present) costs one search."""
    head, sep, body = content.partition(b"\r\n\r\n")
    lowered = head.lower()
    if not any(h in lowered for h in hints):
        return content
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] not in (b" ", b"\t"):
            dropping = drop(line)
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


def strip_fields(content: bytes, prefixes: tuple[bytes, ...]) -> bytes:
    """Remove header fields whose (lower-case) name starts with one of `prefixes`.

    Mail from outside must not arrive already wearing the headers we add — an
    `X-Spam-Flag: NO` or an `X-Scattergate-Backscatter` of the sender's making would be
    believed downstream. Only the top header block is touched (a bounce's attached
    original keeps its fields: they are evidence).
    """
    return _drop_fields(content, prefixes, lambda line: line.lower().startswith(prefixes))


def strip_forged_results(content: bytes, authserv_id: str) -> bytes:
    """Remove incoming Authentication-Results fields that claim our authserv-id (RFC 8601 §5):
    from outside they can only be forgeries meant to look like our verdict."""
    def forged(line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        return bool(colon) and name.strip().lower() == b"authentication-results" and is_ours(
            value.decode("utf-8", "replace"), authserv_id
        )

    return _drop_fields(content, (b"authentication-results",), forged)
