"""The safe-bounce rule: may we send a DSN for a message we accepted but could not deliver?

A bounce goes to the envelope sender, which spammers forge; a DSN to a forged sender *is*
backscatter. So we bounce only to a sender proven genuine, and never for content we judged
hostile (the "sender" of spam or a virus is almost always forged, and telling them helps them).

    allowed  <=>  sender is not null
             and  NOTIFY permits this kind of DSN (absent NOTIFY = default = permitted)
             and  the content verdict is "clean"
             and  (SPF pass for the MAIL FROM domain  or  an aligned DKIM pass)

Everything else is suppressed; the caller quarantines/drops and logs
"bounce suppressed: <reason>". Reasons are stable strings (dashboards and tests key on them).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

CLEAN = "clean"
DsnKind = Literal["failure", "delay", "success"]
_NOTIFY_KEYWORD = {"failure": "FAILURE", "delay": "DELAY", "success": "SUCCESS"}


@dataclass(frozen=True, slots=True)
class BounceDecision:
    allowed: bool
    reason: str  # "ok" when allowed, else why not (e.g. "null-sender")


def _sender_domain(sender: str) -> str | None:
    addr = sender.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    local, at, domain = addr.rpartition("@")
    return domain.lower().rstrip(".") if at and local and domain else None


def is_null_sender(sender: str) -> bool:
    return sender.strip() in ("", "<>")


def may_bounce(
    sender: str,
    *,
    content_verdict: str,
    spf_result: str | None,
    dkim_aligned_pass: bool,
    notify: Collection[str] | None,
    kind: DsnKind = "failure",
) -> BounceDecision:
    """Decide whether a DSN of `kind` may go to `sender`.

    content_verdict: "clean" unless a content check judged the message ("spam", "virus", ...);
        any verdict other than "clean" suppresses, so an unknown verdict fails safe.
    spf_result: the RFC 7208 result for the MAIL FROM identity, or None if not checked.
    dkim_aligned_pass: a valid DKIM signature whose d= is aligned with the MAIL FROM domain
        (see dkim_aligned()).
    notify: the RCPT NOTIFY= keywords, or None when the client gave no NOTIFY.
    """
    if is_null_sender(sender):
        return BounceDecision(False, "null-sender")
    if notify is not None:
        words = {w.strip().upper() for w in notify}
        if "NEVER" in words:
            return BounceDecision(False, "notify-never")
        if _NOTIFY_KEYWORD[kind] not in words:
            return BounceDecision(False, f"notify-no-{kind}")
    verdict = content_verdict.strip().lower()
    if verdict != CLEAN:
        if verdict in ("spam", "virus"):
            return BounceDecision(False, verdict)
        return BounceDecision(False, f"content-{verdict or 'unknown'}")
    if _sender_domain(sender) is None:
        return BounceDecision(False, "sender-no-domain")
    spf = (spf_result or "none").strip().lower()
    if spf == "pass" or dkim_aligned_pass:
        return BounceDecision(True, "ok")
    # "dkim=none" means: no valid DKIM signature aligned with the MAIL FROM domain.
    return BounceDecision(False, f"sender-unverified (spf={spf}, dkim=none)")


def dkim_aligned(
    mail_from_domain: str,
    dkim_domain: str,
    organizational_domain: Callable[[str], str],
) -> bool:
    """Relaxed alignment (as in DMARC): the signing domain d= and the MAIL FROM domain are equal,
    or one is a subdomain of the other within the same organisational domain.

    `organizational_domain` maps a domain to its registrable domain (a public-suffix lookup),
    injected so this stays pure. The parent/child requirement keeps "example.co.uk" from
    aligning with "other.co.uk" even if the lookup were coarse.
    """
    a = mail_from_domain.strip().lower().rstrip(".")
    b = dkim_domain.strip().lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    related = a.endswith("." + b) or b.endswith("." + a)
    if not related:
        return False
    org_a = organizational_domain(a).lower().rstrip(".")
    org_b = organizational_domain(b).lower().rstrip(".")
    return bool(org_a) and org_a == org_b
