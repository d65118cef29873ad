"""The Authentication-Results header (RFC 8601) built from the sender-auth findings.

Findings of the checks "spf", "spf_helo", "dkim" and "dmarc" become resinfo clauses; others
are ignored. Their `detail` follows one convention: space-separated key=value pairs, then
optionally "; " and free text (the reason). Known keys become properties:
  spf       smtp.mailfrom=…          spf_helo  smtp.helo=…
  dkim      d=… s=… → header.d=… header.s=…
  dmarc     header.from=…, and p=/sp= shown as a comment
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

from scattergate.model import Finding

HEADER = "Authentication-Results"

_METHODS = {"spf": "spf", "spf_helo": "spf", "dkim": "dkim", "dmarc": "dmarc"}
_PROPS = {
    "spf": (("smtp.mailfrom", "smtp.mailfrom"),),
    "spf_helo": (("smtp.helo", "smtp.helo"),),
    "dkim": (("d", "header.d"), ("s", "header.s"), ("i", "header.i")),
    "dmarc": (("header.from", "header.from"),),
}
# RFC 2045 token: printable ASCII except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# RFC 8601 pvalue may also be [local-part] "@" domain.
_ADDR = re.compile(r"^[!#$%&'*+\-./0-9=?A-Z^_`a-z{|}~]*@[A-Za-z0-9.\-_]+$")
_RESULT = re.compile(r"^[a-z]+$")
_MAX_REASON = 200


def split_detail(detail: str) -> tuple[dict[str, str], str]:
    """(key=value pairs, free text) of a finding's detail, per the convention above."""
    head, _, reason = detail.partition("; ")
    pairs: dict[str, str] = {}
    for token in head.split():
        key, eq, value = token.partition("=")
        if eq and key:
            pairs.setdefault(key, value)
        else:  # not our convention: the whole detail is free text
            return {}, detail
    return pairs, reason


def resinfo(finding: Finding) -> str | None:
    """One resinfo clause ("spf=pass smtp.mailfrom=a@b.example"), or None if not ours."""
    if finding.check not in _METHODS:
        return None
    return _clause(finding)


# Remembered: every message gets a header, and the same clauses come again and again (dkim=none,
# the DMARC result of a From domain, the SPF result of a regular sender).
@functools.lru_cache(maxsize=2048)
def _clause(finding: Finding) -> str:
    method = _METHODS[finding.check]
    result = finding.result if _RESULT.match(finding.result) else "permerror"
    pairs, reason = split_detail(finding.detail)
    reason = reason.strip()
    parts = [f"{method}={result}"]
    if finding.check == "dmarc":
        policy = " ".join(f"{k}={pairs[k]}" for k in ("p", "sp") if k in pairs and _TOKEN.match(pairs[k]))
        if policy:
            parts.append(f"({policy})")
    if reason and result != "pass":
        parts.append(f"reason={_quote(reason[:_MAX_REASON])}")
    for key, prop in _PROPS[finding.check]:
        value = pairs.get(key, "")
        if value:
            parts.append(f"{prop}={_pvalue(value)}")
    return " ".join(parts)


def build(authserv_id: str, findings: Iterable[Finding], *, linesep: str | None = "\r\n") -> str:
    """The header *value*: "authserv-id; spf=…; dkim=…; dmarc=…" (or "authserv-id; none").

    With `linesep`, each clause is folded onto its own line; with None, one line.
    """
    if not _TOKEN.match(authserv_id) or len(authserv_id) > 255:
        raise ValueError(f"authserv-id must be a token (a host name): {authserv_id!r}")
    clauses = [c for c in (resinfo(f) for f in findings) if c]
    if not clauses:
        return f"{authserv_id}; none"
    sep = f";{linesep}\t" if linesep else "; "
    return authserv_id + sep + sep.join(clauses)


def header(authserv_id: str, findings: Iterable[Finding], *, linesep: str = "\r\n") -> str:
    """The whole field, "Authentication-Results: …", without the final line ending."""
    return f"{HEADER}: {build(authserv_id, findings, linesep=linesep)}"


def is_ours(value: str, authserv_id: str) -> bool:
    """Whether an existing Authentication-Results value claims our authserv-id; RFC 8601 §5
    says such fields arriving from outside are forgeries to remove before adding ours."""
    head = re.sub(r"\([^()]*\)", " ", value).split(";", 1)[0].split()
    return bool(head) and head[0].lower() == authserv_id.lower()


def _quote(text: str) -> str:
    # Usually printable ASCII already: no per-character pass (every message has a reason).
    clean = text if text.isascii() and text.isprintable() else "".join(
        c if c.isprintable() and c.isascii() else "?" for c in text)
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pvalue(value: str) -> str:
    if _TOKEN.match(value) or _ADDR.match(value):
        return value
    return _quote(value)
