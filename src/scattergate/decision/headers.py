"""Headers we add to accepted mail, rendered from the findings behind the verdict.

Checks never touch the message: they report findings, and each renderer here turns the
findings it understands into header fields (Authentication-Results from spf/dkim/dmarc,
X-Spam-* from the content scanners, ...). Register a renderer by appending to RENDERERS.
"""

from __future__ import annotations

from typing import Callable, Sequence

from scattergate.model import Finding

# (authserv-id / our hostname, findings) -> [(name, value)]; values on one line, no CRLF.
HeaderRenderer = Callable[[str, Sequence[Finding]], list[tuple[str, str]]]

RENDERERS: list[HeaderRenderer] = []


def render_headers(hostname: str, findings: Sequence[Finding]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for renderer in RENDERERS:
        for name, value in renderer(hostname, findings):
            # A header value with a line break could inject fields: fold it to one line.
            headers.append((name, " ".join(value.split())))
    return headers
