"""A DSN rate limiter: token buckets per recipient address and per recipient domain.

Even DSNs to verified senders must not turn us into a flood source (a mail loop, a broken
downstream, a list that keeps failing). State lives in memory; the clock is injected so tests
need no sleeps. Not thread-safe: use one per event loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from scattergate.bounce.policy import BounceDecision


@dataclass(frozen=True, slots=True)
class Rate:
    burst: float  # bucket capacity: DSNs allowed at once
    per_second: float  # refill rate

    @classmethod
    def per_hour(cls, count: float, burst: float | None = None) -> Rate:
        return cls(burst if burst is not None else count, count / 3600.0)

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_second < 0:
            raise ValueError("a rate needs burst >= 1 and per_second >= 0")


class _Buckets:
    """Token buckets keyed by string, bounded in number: a full bucket is the same as no bucket,
    so those are dropped first; beyond that the least recently used go."""

    def __init__(self, rate: Rate, max_keys: int) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def level(self, key: str, now: float) -> float:
        tokens, then = self._state.get(key, (self.rate.burst, now))
        elapsed = max(0.0, now - then)  # a clock stepping backwards must not mint tokens
        return min(self.rate.burst, tokens + elapsed * self.rate.per_second)

    def take(self, key: str, now: float) -> None:
        self._state[key] = (self.level(key, now) - 1.0, now)
        self._state.move_to_end(key)
        if len(self._state) > self.max_keys:
            self._prune(now)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._state if self.level(k, now) >= self.rate.burst]:
            del self._state[key]
        while len(self._state) > self.max_keys:
            self._state.popitem(last=False)

    def __len__(self) -> int:
        return len(self._state)


class DsnRateLimiter:
    def __init__(
        self,
        *,
        per_address: Rate,
        per_domain: Rate,
        clock: Callable[[], float],
        max_keys: int = 100_000,
    ) -> None:
        self._address = _Buckets(per_address, max_keys)
        self._domain = _Buckets(per_domain, max_keys)
        self._clock = clock

    def allow(self, recipient: str) -> BounceDecision:
        """Take one token from both the address's and the domain's bucket, or none at all
        (a refusal must not use up the other bucket)."""
        addr = recipient.strip().strip("<>").lower()
        domain = addr.rpartition("@")[2]
        now = self._clock()
        if self._address.level(addr, now) < 1.0:
            return BounceDecision(False, "rate-limited (address)")
        if self._domain.level(domain, now) < 1.0:
            return BounceDecision(False, "rate-limited (domain)")
        self._address.take(addr, now)
        self._domain.take(domain, now)
        return BounceDecision(True, "ok")
