"""Client rate limits, counted in the state store so that every gateway sharing it shares them.

Three counters, each in a fixed window that starts at its first event (`StateStore.hit`):
- connections per client address, at connect;
- messages per client address, counted once per transaction at its first RCPT that passes the
  local checks (a relay attempt or an unknown user costs no store round trip);
- recipients per envelope-sender domain, at every such RCPT.
Trusted clients are counted under their own keys against their own limits (exempt when those
are 0). IPv6 clients are counted per /64: one host usually owns the whole prefix.

The findings are `ratelimit.connections|messages|recipients` (the policy table answers 421 or
450) and `ratelimit.unavailable` when the store failed or was slower than the budget. That one
is observed by default: the limits fail *open*. A rate limit protects capacity, not
correctness, and refusing every client whenever Redis blinks would turn a state-store outage
into a mail outage; mail that really needs the store (registry, quarantine) still tempfails on
its own. Sites that prefer to fail closed set `policy.actions."ratelimit.unavailable" = "tempfail"`.
After a failure the store is left alone for `RETRY_AFTER` seconds, so a hung Redis cannot fill
the thread pool with calls that wait for their socket timeout.

Cost: the counts of all sessions that ask while one store call is in flight go together in the
next call (one thread hand-off, one Redis round trip or SQLite transaction for the batch), so
under load the per-event cost falls instead of queueing up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from scattergate.config import RateLimitConfig, RateLimits
from scattergate.model import Envelope, Finding, Session
from scattergate.state.store import StateStore

log = logging.getLogger(__name__)

CHECK = "ratelimit"
# Seconds the store is not asked after it failed or was too slow (a "circuit breaker").
RETRY_AFTER = 1.0


def client_key(ip: str) -> str:
    """The address a client is counted under: IPv4 as is, IPv6 by its /64 (4-in-6 as IPv4)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # "unknown" and the like: one bucket for all of them
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class _Counter:
    result: str  # the finding's result when over the limit
    key: str
    limit: int
    what: str  # for the finding's detail


class RateLimiter:
    def __init__(
        self, store: StateStore, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.window = config.window
        self.budget = config.budget
        self.untrusted = RateLimits(
            config.connections_per_client, config.messages_per_client, config.recipients_per_sender_domain
        )
        self.trusted = config.trusted
        self._clock = clock
        self._resume_at = 0.0
        self._batch = _Batcher(store, config.window)

    @staticmethod
    def wanted(config: RateLimitConfig) -> bool:
        """Is any limit set? If not, the gateway builds no limiter and pays nothing."""
        limits = (config.connections_per_client, config.messages_per_client, config.recipients_per_sender_domain,
                  config.trusted.connections_per_client, config.trusted.messages_per_client,
                  config.trusted.recipients_per_sender_domain)
        return any(limits)

    def _limits(self, session: Session) -> tuple[RateLimits, str]:
        # Trusted counters live under their own prefix: a trusted user and a forger of the same
        # sender domain do not share a recipient budget.
        return (self.trusted, "t") if session.trusted else (self.untrusted, "")

    async def at_connect(self, session: Session) -> list[Finding]:
        limits, prefix = self._limits(session)
        if not limits.connections_per_client:
            return []
        client = client_key(session.client_ip)
        return await self._count([
            _Counter("connections", f"{prefix}c:{client}", limits.connections_per_client, f"connections from {client}"),
        ])

    async def at_rcpt(self, session: Session, envelope: Envelope) -> tuple[list[Finding], list[Finding]]:
        """(findings about the message, which hold for the rest of the transaction;
        findings about this recipient)."""
        limits, prefix = self._limits(session)
        counters: list[_Counter] = []
        if limits.messages_per_client and not envelope.rate_counted:
            envelope.rate_counted = True  # once per transaction, even if the store fails now
            client = client_key(session.client_ip)
            counters.append(_Counter("messages", f"{prefix}m:{client}", limits.messages_per_client,
                                     f"messages from {client}"))
        domain = envelope.sender.domain.lower() if not envelope.sender.is_null else ""
        if limits.recipients_per_sender_domain and domain:
            counters.append(_Counter("recipients", f"{prefix}r:{domain}", limits.recipients_per_sender_domain,
                                     f"recipients from senders @{domain}"))
        if not counters:
            return [], []
        findings = await self._count(counters)
        return [f for f in findings if f.result == "messages"], [f for f in findings if f.result != "messages"]

    async def _count(self, counters: Sequence[_Counter]) -> list[Finding]:
        now = self._clock()
        if now < self._resume_at:
            return [Finding(CHECK, "unavailable", "state store failed recently; limits skipped")]
        try:
            async with asyncio.timeout(self.budget):
                counts = await self._batch.hit([c.key for c in counters])
        except Exception as exc:  # store down, slow or broken: never the client's problem here
            if self._resume_at <= now - RETRY_AFTER:  # one log line per outage, not per event
                log.warning("rate limits skipped: state store %s", _describe(exc, self.budget))
            self._resume_at = now + RETRY_AFTER
            return [Finding(CHECK, "unavailable", _describe(exc, self.budget))]
        return [
            Finding(CHECK, c.result, f"{n} {c.what} in {self.window:g} s, limit {c.limit}")
            for c, n in zip(counters, counts)
            if n > c.limit
        ]


class _Batcher:
    """Group commit for counters: while one `store.hit` runs in a thread, the keys asked for
    meanwhile wait, and go together in the next call."""

    def __init__(self, store: StateStore, window: float) -> None:
        self.store = store
        self.window = window
        self._waiting: list[tuple[list[str], asyncio.Future[list[int]]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def hit(self, keys: list[str]) -> list[int]:
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())  # kept: no GC mid-run
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                keys = [key for wanted, _ in batch for key in wanted]
                try:
                    counts = await asyncio.to_thread(self.store.hit, keys, self.window)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():  # its caller may have given up (budget)
                            future.set_exception(exc)
                    continue
                start = 0
                for wanted, future in batch:
                    if not future.done():
                        future.set_result(counts[start:start + len(wanted)])
                    start += len(wanted)
        finally:
            self._running = False


class AuthFailureLimit:
    """Failed SMTP AUTH attempts per client address, counted in the state store: a password
    guesser that reconnects after each per-connection limit, or spreads its guesses over the
    gateways sharing Redis, is still counted, and refused before any password is checked.
    Fails open like the rate limits: with the store down, the per-connection limit remains."""

    def __init__(self, store: StateStore, limit: int, window: float, budget: float = 0.5) -> None:
        self.store = store
        self.limit = limit
        self.window = window
        self.budget = budget

    async def locked_out(self, ip: str) -> bool:
        count = await self._hit(ip, 0)  # amount 0: read the count without adding to it
        return count is not None and count >= self.limit

    async def failed(self, ip: str) -> None:
        await self._hit(ip, 1)

    async def _hit(self, ip: str, amount: int) -> int | None:
        try:
            async with asyncio.timeout(self.budget):
                counts = await asyncio.to_thread(self.store.hit, [f"a:{client_key(ip)}"], self.window, amount)
            return counts[0]
        except Exception as exc:
            log.warning("AUTH failure count skipped: state store %s", _describe(exc, self.budget))
            return None


def _describe(exc: BaseException, budget: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"gave no answer within {budget:g} s"
    return f"failed: {type(exc).__name__}: {exc}"
