"""Recipient verification against the downstream MTA, with a short-lived cache.

Like Postfix's reject_unverified_recipient: before accepting RCPT for a local address we ask
the downstream (MAIL FROM:<> / RCPT TO) whether it would take it. Its 5xx becomes our 5xx at
RCPT, its 4xx or silence our 4xx — so an address the downstream does not know is never
accepted and later bounced. Answers are cached (positive and negative for their own TTLs;
temporary failures never), and concurrent probes for one address share a single probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from scattergate.address import parse_path
from scattergate.checks import CheckContext
from scattergate.delivery.relay import DownstreamUnavailable, Relay
from scattergate.model import Finding, Reply


class RecipientVerifier:
    name = "verify"

    def __init__(
        self,
        relay: Relay,
        is_local: Callable[[str], bool],
        *,
        positive_ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._relay = relay
        self._is_local = is_local
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Reply]] = {}
        self._in_flight: dict[str, asyncio.Future[Reply]] = {}

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        rcpt = ctx.recipient
        assert rcpt is not None
        if not self._is_local(rcpt.domain):
            return []
        try:
            reply = await self.lookup(rcpt.normalized, smtputf8=not rcpt.normalized.isascii())
        except DownstreamUnavailable as exc:
            return [Finding("verify", "deferred", f"downstream unavailable ({exc})")]
        if reply.code < 300:
            return []
        result = "rejected" if reply.code >= 500 else "deferred"
        return [Finding("verify", result, str(reply))]

    async def lookup(self, address: str, *, smtputf8: bool = False) -> Reply:
        now = self._clock()
        cached = self._cache.get(address)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._in_flight.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._in_flight[address] = future
        try:
            reply = await self._relay.probe(parse_path(address), smtputf8=smtputf8)
            future.set_result(reply)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._in_flight[address]
        ttl = self._positive_ttl if reply.code < 300 else self._negative_ttl if reply.code >= 500 else 0
        if ttl > 0:
            if len(self._cache) > 100_000:  # bound memory under a dictionary attack
                self._cache.clear()
            self._cache[address] = (now + ttl, reply)
        return reply
