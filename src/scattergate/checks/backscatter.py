"""Refusing the backscatter others send us: bounces and auto-replies for mail we never sent.

Three kinds of evidence prove that an automated message refers to mail we did send:
- a valid BATV tag on the recipient (our outbound envelope senders are signed, so genuine
  bounces come back to `prvs=...=user@domain`) — checked at RCPT;
- the original's Message-ID, found in the sent-message registry;
- our HMAC token header quoted from the original.
Anything automated (null sender, or classified as bounce / auto-reply / challenge) without
any of them is unsolicited: `backscatter.unsolicited`, which the policy refuses by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Sequence

from scattergate.address import Address, AddressError, parse_path
from scattergate.bounce.classify import Kind, classify
from scattergate.checks import CheckContext
from scattergate.decision.headers import RENDERERS
from scattergate.model import Envelope, Finding
from scattergate.rewrite import batv, token
from scattergate.rewrite.keys import BatvKeyring, Secret
from scattergate.state.store import StateStore

# Kinds that only exist because of some earlier message: they need evidence that it was ours.
# (ARF feedback reports are addressed to abuse desks on purpose; they are not backscatter.)
_AUTOMATED = {Kind.DSN, Kind.BOUNCE, Kind.AUTO_REPLY, Kind.CHALLENGE}


def message_hash(message_id: str) -> str:
    return hashlib.sha256(token.normalize_message_id(message_id).encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class BatvSettings:
    keyring: BatvKeyring
    domains: frozenset[str]
    default_mode: str
    modes: dict[str, str]

    def mode_for(self, address: str) -> str:
        """The BATV mode of an address: per address, else per domain, else the default."""
        address = address.lower()
        domain = address.rpartition("@")[2]
        if address in self.modes:
            return self.modes[address]
        if domain in self.modes:
            return self.modes[domain]
        return self.default_mode if domain in self.domains else "off"


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

    def sign(self, sender: Address) -> Address:
        """Our outbound envelope sender, tagged when its domain uses BATV."""
        if sender.is_null or self.settings.mode_for(str(sender)) == "off" or batv.parse(str(sender)):
            return sender
        try:
            return parse_path(f"<{batv.sign(str(sender), self.settings.keyring, self.today())}>")
        except AddressError:  # a local part too long to tag: send it untagged
            return sender


class SentRegistry:
    """Message-IDs (hashed) of our outbound mail, in the shared state store."""

    def __init__(self, store: StateStore, *, keep_days: float, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.keep = keep_days * 86400
        self._clock = clock

    async def remember(self, message_id: str, sender: str) -> None:
        await asyncio.to_thread(self.store.sent_add, message_hash(message_id), sender, self._clock(), self.keep)

    async def sent(self, message_id: str) -> bool:
        found = await asyncio.to_thread(self.store.sent_lookup, message_hash(message_id), self._clock() - self.keep)
        return found is not None


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
        verdict = classify(ctx.content, str(envelope.sender))
        null = envelope.sender.is_null
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


def outbound_message_id(content: bytes) -> str | None:
    """The Message-ID of a message we send (header block only)."""
    head = content.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            value = line[11:].strip().decode("utf-8", "replace")
            return value or None
    return None


def backscatter_header(hostname: str, findings: Sequence[Finding]) -> list[tuple[str, str]]:
    """Say on delivered mail what the backscatter check saw (tag mode relies on it)."""
    return [
        ("X-Scattergate-Backscatter", f"{f.result} {f.detail}".strip())
        for f in findings
        if f.check == "backscatter"
    ]


RENDERERS.append(backscatter_header)
