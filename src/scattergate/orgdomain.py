"""Organisational domains and identifier alignment (RFC 7489 §3.1, §3.2), pure.

The organisational domain comes from the Public Suffix List shipped in the `publicsuffixlist`
package (no network at run time). DMARC uses `aligned()` for the From domain; the one
sender-proof rule (decision/sender_proof.py) uses it for the MAIL FROM domain.
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList


@functools.lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # loads the bundled list once (a few ms)


def normalize(domain: str) -> str:
    """Lower-case, no trailing dot, A-labels where the name is internationalised."""
    d = domain.strip().rstrip(".").lower()
    if d and not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return d


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label; a public suffix is its own."""
    d = normalize(domain)
    if not d:
        return ""
    return _psl().privatesuffix(d) or d


def aligned(domain_a: str, domain_b: str, strict: bool) -> bool:
    """Identifier alignment (RFC 7489 §3.1): strict = same name; relaxed = same
    organisational domain."""
    a, b = normalize(domain_a), normalize(domain_b)
    if not a or not b:
        return False
    if a == b:
        return True
    # A bare public suffix is its own organisational domain, so "co.uk" aligns with nothing
    # below it: "a.co.uk" has the organisational domain "a.co.uk".
    return not strict and organizational_domain(a) == organizational_domain(b)
