"""The one sender-proof rule: is the envelope sender proven genuine?

Only a proven sender may ever receive a DSN from us (the safe-bounce rule in bounce/policy.py
for the spool route; NOTIFY=NEVER for the milter route, where Postfix bounces). Every route
asks this module, so the routes cannot disagree about who is genuine.

    proven  <=>  SPF pass for the MAIL FROM identity
            or   a DKIM pass whose d= is aligned with the MAIL FROM domain under DMARC
                 relaxed alignment (same organisational domain, RFC 7489 §3.1.1)

Relaxed alignment means siblings align: MAIL FROM a.example.com signed d=b.example.com is
proven (example.com vouches for both), while example.co.uk and other.co.uk never align (the
organisational domain comes from the public suffix list).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scattergate.orgdomain import aligned

if TYPE_CHECKING:  # the results' types only; the rule needs no check code
    from scattergate.checks.dkim import DkimResult
    from scattergate.checks.spf import SpfResult
    from scattergate.model import Envelope


@dataclass(frozen=True, slots=True)
class SenderProof:
    """The evidence about the MAIL FROM identity, as kept with a spooled message."""

    spf_result: str | None  # the SPF result for the MAIL FROM identity; None: not checked
    dkim_aligned: bool  # a valid DKIM signature aligned (relaxed) with the MAIL FROM domain

    @property
    def proven(self) -> bool:
        return (self.spf_result or "").strip().lower() == "pass" or self.dkim_aligned

    @property
    def explanation(self) -> str:
        """Why the sender is not proven, in the stable form logs and dashboards key on."""
        spf = (self.spf_result or "none").strip().lower()
        return f"spf={spf}, dkim={'aligned' if self.dkim_aligned else 'none'}"


def dkim_aligned(mail_from_domain: str, dkim_domain: str) -> bool:
    """Does a DKIM signature by `dkim_domain` vouch for `mail_from_domain`? (relaxed alignment)"""
    return aligned(mail_from_domain, dkim_domain, strict=False)


def sender_domain(sender: str) -> str:
    """The domain of an envelope sender ("" for the null sender or a bare local part)."""
    addr = sender.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    local, at, domain = addr.rpartition("@")
    return domain.lower().rstrip(".") if at and local and domain else ""


def sender_proof(sender: str, spf: SpfResult | None, dkim: Iterable[DkimResult]) -> SenderProof:
    """The evidence for `sender` from the checks' results: `spf` an SpfResult (or None),
    `dkim` the DkimResults of the message. An SPF result for the HELO identity proves
    nothing about the MAIL FROM."""
    domain = sender_domain(sender)
    spf_result = spf.result if spf is not None and spf.identity == "mailfrom" and domain else None
    signed = bool(domain) and any(r.result == "pass" and dkim_aligned(domain, r.domain) for r in dkim)
    return SenderProof(spf_result, signed)


def envelope_proof(envelope: Envelope) -> SenderProof:
    """The evidence the sender-auth checks left on an Envelope."""
    return sender_proof(str(envelope.sender), envelope.spf, envelope.dkim)
