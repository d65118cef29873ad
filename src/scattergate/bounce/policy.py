"""The safe-bounce rule: may we send a DSN for a message we accepted but could not deliver?

A bounce goes to the envelope sender, which spammers forge; a DSN to a forged sender *is*
backscatter. So we bounce only to a sender proven genuine, and never for content we judged
hostile (the "sender" of spam or a virus is almost always forged, and telling them helps them).

    allowed  <=>  sender is not null
             and  NOTIFY permits this kind of DSN (absent NOTIFY = default = permitted)
             and  the content verdict is "clean"
             and  the sender is proven genuine (decision/sender_proof.py: SPF pass for the
                  MAIL FROM domain, or a DKIM pass aligned with it under DMARC relaxed alignment)

Everything else is suppressed; the caller quarantines/drops and logs
"bounce suppressed: <reason>". Reasons are stable strings (dashboards and tests key on them).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from scattergate.decision.sender_proof import SenderProof, sender_domain
from scattergate.model import Finding

CLEAN = "clean"
DsnKind = Literal["failure", "delay", "success"]
_NOTIFY_KEYWORD = {"failure": "FAILURE", "delay": "DELAY", "success": "SUCCESS"}


@dataclass(frozen=True, slots=True)
class BounceDecision:
    allowed: bool
    reason: str  # "ok" when allowed, else why not (e.g. "null-sender")


def content_verdict(findings: Sequence[Finding]) -> str:
    """What the content checks judged, for this rule: "virus", "spam" or "clean". Kept with a
    spooled message, because the bounce is decided long after the findings are gone."""
    results = {f.result for f in findings}
    if "virus" in results:
        return "virus"
    if results & {"spam", "reject", "tag"}:
        return "spam"
    return "clean"


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
        (decision.sender_proof.dkim_aligned).
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
    if not sender_domain(sender):
        return BounceDecision(False, "sender-no-domain")
    proof = SenderProof(spf_result, dkim_aligned_pass)
    if proof.proven:
        return BounceDecision(True, "ok")
    # "dkim=none" means: no valid DKIM signature aligned with the MAIL FROM domain.
    return BounceDecision(False, f"sender-unverified ({proof.explanation})")
