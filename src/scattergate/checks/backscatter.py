"""Refusing the backscatter others send us: bounces and auto-replies for mail we never sent.

Three kinds of evidence prove that an automated message refers to mail we did send:
- a valid BATV tag on the recipient (our outbound envelope senders are signed, so genuine
  bounces come back to `prvs=...=user@domain`) — checked at RCPT;
- the original's Message-ID, found in the sent-message registry;
- our HMAC token header quoted from the original.
Anything automated (null sender, or classified as bounce / auto-reply / challenge) without
any of them is unsolicited: `backscatter.unsolicited`, which the policy refuses by default.
The outbound side that leaves this evidence on our own mail is scattergate/outbound.py.
"""

from __future__ import annotations

import time
from typing import Sequence

from scattergate.address import Address, AddressError, parse_path
from scattergate.bounce.classify import Kind, classify
from scattergate.checks import CheckContext
from scattergate.model import Envelope, Finding
from scattergate.outbound import BatvSettings, SentRegistry
from scattergate.rewrite import batv, token
from scattergate.rewrite.keys import Secret

# Kinds that only exist because of some earlier message: they need evidence that it was ours.
# (ARF feedback reports are addressed to abuse desks on purpose; they are not backscatter.)
_AUTOMATED = {Kind.DSN, Kind.BOUNCE, Kind.AUTO_REPLY, Kind.CHALLENGE}


class BatvGuard:
    """BATV at RCPT: strips our tag from a recipient and says whether it was valid."""

    def __init__(self, settings: BatvSettings, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self._clock = clock

    def today(self) -> int:
        return batv.days_since_epoch(self._clock())

    def inspect(self, sender: Address, recipient: Address) -> tuple[Address, list[Finding]]:
        """(the recipient to use, findings). A tagged recipient is replaced by the bare address."""
        findings: list[Finding] = []
        raw = str(recipient)
        parsed = batv.parse(raw)
        if parsed is not None:
            try:
                bare = parse_path(f"<{parsed.address}>")
            except AddressError:
                return recipient, [Finding("batv", "invalid", "malformed tagged address")]
            mode = self.settings.mode_for(parsed.address)
            if mode == "off":
                return bare, []
            result = batv.verify(raw, self.settings.keyring, self.today())
            if result.valid:
                return bare, [Finding("batv", "valid", parsed.address)]
            # Only a bounce *needs* the tag; for anything else a bad tag is just noted.
            if sender.is_null and mode == "enforce":
                return bare, [Finding("batv", "invalid", f"{result.status.value} for {parsed.address}")]
            return bare, [Finding("batv", "bad_tag", result.status.value, score=1.0)]
        if sender.is_null:
            mode = self.settings.mode_for(raw)
            if mode == "enforce":
                findings.append(Finding("batv", "missing", f"bounce to untagged {recipient.normalized}"))
            elif mode == "score":
                findings.append(Finding("batv", "unsigned", recipient.normalized, score=1.0))
        return recipient, findings


class BackscatterCheck:
    """End of DATA: is this automated message about mail we sent?"""

    def __init__(self, registry: SentRegistry, secret: Secret) -> None:
        self.registry = registry
        self.secret = secret

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        envelope, session = ctx.envelope, ctx.session
        assert envelope is not None and ctx.content is not None
        if session.trusted:
            return []
        null = envelope.sender.is_null
        # A null sender's "none" still goes into the finding with its confidence; any other
        # sender's matters only by its kind.
        verdict = classify(ctx.content, str(envelope.sender), kind_only=not null)
        if not null and verdict.kind not in _AUTOMATED:
            return []
        kind = verdict.kind.value if verdict.kind is not Kind.NONE else "null-sender"
        about = f"kind={kind} confidence={verdict.confidence:.2f}"
        if null and len(envelope.recipients) > 1:
            # A bounce goes to exactly one address: the sender of the failed message.
            return [Finding("backscatter", "multiple_recipients", f"{about} recipients={len(envelope.recipients)}")]
        evidence = await self.evidence(envelope, ctx.content, verdict.original_message_id)
        if evidence:
            return [Finding("backscatter", "solicited", f"{about} evidence={evidence}")]
        ref = f" original={verdict.original_message_id}" if verdict.original_message_id else ""
        return [Finding("backscatter", "unsolicited", f"{about}{ref}")]

    async def evidence(self, envelope: Envelope, content: bytes, original_id: str | None) -> str:
        """Which evidence proves the message refers to our mail ('' when none does)."""
        for finding in envelope.rcpt_findings:
            if finding.key in ("batv.valid", "srs.valid"):  # srs: a bounce for mail we forwarded
                return finding.check
        if original_id and await self.registry.sent(original_id):
            return "registry"
        if token.found_in(content, self.secret, original_id):
            return "token"
        return ""


def backscatter_header(hostname: str, findings: Sequence[Finding]) -> list[tuple[str, str]]:
    """Say on delivered mail what the backscatter check saw (tag mode relies on it)."""
    return [
        ("X-Scattergate-Backscatter", f"{f.result} {f.detail}".strip())
        for f in findings
        if f.check == "backscatter"
    ]

