"""Our own users' mail, marked so that the genuine bounces for it can prove they are ours.

Every route that carries a trusted client's message out (the SMTP front end relaying it
ourselves, the milter telling Postfix what to change) marks it here, the same way:
- the envelope sender is BATV-signed (`prvs=...`) when its domain uses BATV;
- the Message-ID is remembered (hashed) in the sent-message registry of the state store;
- the token header (an HMAC of the Message-ID under the site secret) is added.
The inbound side (checks/backscatter.py) looks for exactly this evidence.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

from scattergate.address import Address, AddressError, parse_path
from scattergate.rewrite import batv, token
from scattergate.rewrite.keys import BatvKeyring, Secret
from scattergate.state.store import StateStore


def message_hash(message_id: str) -> str:
    """The registry key of a Message-ID: we keep no Message-ID in the clear."""
    return hashlib.sha256(token.normalize_message_id(message_id).encode("utf-8", "replace")).hexdigest()


def outbound_message_id(content: bytes) -> str | None:
    """The Message-ID of a message we send (header block only)."""
    head = content.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            value = line[11:].strip().decode("utf-8", "replace")
            return value or None
    return None


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


class OutboundMarker:
    """Marks a trusted client's message: BATV-signed sender, registered Message-ID, token."""

    def __init__(self, batv_settings: BatvSettings, registry: SentRegistry, secret: Secret,
                 clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.batv = batv_settings
        self.registry = registry
        self._secret = secret
        self._clock = clock

    def sign(self, sender: Address) -> Address:
        """Our outbound envelope sender, tagged when its domain uses BATV."""
        if sender.is_null or self.batv.mode_for(str(sender)) == "off" or batv.parse(str(sender)):
            return sender
        today = batv.days_since_epoch(self._clock())
        try:
            return parse_path(f"<{batv.sign(str(sender), self.batv.keyring, today)}>")
        except AddressError:  # a local part too long to tag: send it untagged
            return sender

    async def remember(self, sender: Address, content: bytes) -> tuple[str, str] | None:
        """Register the message's Message-ID; the token header (name, value) it must carry,
        None when it has no Message-ID to prove anything with. Raises OSError when the state
        store is down: the caller must not send the mail unproven (its bounces would be refused)."""
        message_id = outbound_message_id(content)
        if not message_id:
            return None
        await self.registry.remember(message_id, str(sender))
        return token.HEADER, token.make(self._secret, message_id)

    async def mark(self, sender: Address, message: bytes) -> tuple[Address, bytes]:
        """For a route that sends the message itself: (the signed sender, the message with
        its token header on top)."""
        header = await self.remember(sender, message)
        if header is not None:
            message = f"{header[0]}: {header[1]}\r\n".encode() + message
        return self.sign(sender), message
