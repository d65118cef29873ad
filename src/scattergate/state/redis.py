"""Redis state store: one state shared by every gateway of a site.

Same contract as `SqliteStore`; the differences that matter:
- every Redis failure (down, slow past the socket timeout, read-only replica, out of memory)
  is raised as `StoreUnavailable`, an `OSError`, so the callers that already turn I/O errors
  into a tempfail (quarantine hold) do so for Redis too; the others end as 451 via the check
  runner or the SMTP front end;
- the sent-message registry expires by key TTL on Redis's own clock, which all gateways share,
  so clock skew between gateways does not shorten or stretch the window;
- quarantined content is copied into Redis beside its index entry: the file stays on the disk
  of the gateway that held it (fsynced before the 250, as with SQLite), and the copy makes it
  readable from every other gateway without a shared file system.

All keys live under one prefix containing a hash tag, so in a Redis Cluster they would share a
slot and MULTI/EXEC would keep working (docs/redis.md says what is supported).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import redis

from scattergate.state.store import (
    DecisionRecord,
    QuarantineItem,
    storable,
    storable_batch,
    storable_item,
)

T = TypeVar("T")

DEFAULT_PREFIX = "{scattergate}:"
# How many quarantine ids a search reads per round trip.
_SEARCH_PAGE = 500
# Rate-limit counters (StateStore.hit): KEYS are the counters, ARGV the window in ms and the amount.
_HIT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
    redis.call('SET', key, 0, 'PX', ARGV[1], 'NX')
    counts[i] = redis.call('INCRBY', key, ARGV[2])
end
return counts
"""


class StoreUnavailable(OSError):
    """The state store could not do what was asked (now): the caller should tempfail."""


class RedisStore:
    def __init__(
        self, client: redis.Redis, *, keep_decisions: int = 100_000, prefix: str = DEFAULT_PREFIX
    ) -> None:
        self.client = client
        self._keep = keep_decisions
        self._p = prefix
        self._hit_script: Any = None  # registered on first use

    # -- keys ------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except redis.RedisError as exc:
            # The message says it all; redis-py's internal frames would only bury it in the log.
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from None

    # -- counters and decisions ----------------------------------------------------------

    def add(self, counters: dict[str, int], decisions: Sequence[DecisionRecord]) -> None:
        counters, decisions = storable_batch(counters, decisions)
        if not counters and not decisions:
            return

        def write() -> None:
            pipe = self.client.pipeline(transaction=True)  # one MULTI/EXEC: all or nothing
            for name, value in counters.items():
                pipe.hincrby(self._key("counters"), name, value)
            if decisions:
                key = self._key("decisions")
                pipe.lpush(key, *(_dump_decision(d) for d in decisions))
                pipe.ltrim(key, 0, self._keep - 1)
            pipe.execute()

        self._call(write)

    def counters(self) -> dict[str, int]:
        raw = self._call(lambda: self.client.hgetall(self._key("counters")))
        return {k.decode(): int(v) for k, v in sorted(raw.items())}

    def recent_decisions(self, limit: int = 50) -> list[DecisionRecord]:
        if limit <= 0:
            return []
        raw = self._call(lambda: self.client.lrange(self._key("decisions"), 0, limit - 1))
        return [_load_decision(r) for r in raw]

    # -- quarantine ------------------------------------------------------------------------

    def quarantine_add(self, item: QuarantineItem) -> None:
        item = storable_item(item)
        # The file was written and fsynced by the caller; the copy is for the other gateways.
        content = Path(item.path).read_bytes() if item.path else b""

        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._key("q", "content", item.id), content)
            pipe.set(self._key("q", "item", item.id), _dump_item(item))
            pipe.zadd(self._key("q", "index"), {item.id: item.time})
            pipe.execute()

        self._call(write)

    def quarantine_list(self, limit: int = 100, search: str = "") -> list[QuarantineItem]:
        index = self._key("q", "index")
        needle = search.casefold()
        found: list[QuarantineItem] = []
        start = 0
        while len(found) < limit:
            page = limit if not needle else _SEARCH_PAGE
            ids = self._call(lambda: self.client.zrevrange(index, start, start + page - 1))
            if not ids:
                break
            raw = self._call(lambda: self.client.mget([self._key("q", "item", i.decode()) for i in ids]))
            for value in raw:
                if value is None:  # removed between the two reads
                    continue
                item = _load_item(value)
                if not needle or _matches(item, needle):
                    found.append(item)
            start += page
        return found[:limit]

    def quarantine_get(self, item_id: str) -> QuarantineItem | None:
        raw = self._call(lambda: self.client.get(self._key("q", "item", item_id)))
        return _load_item(raw) if raw is not None else None

    def quarantine_content(self, item_id: str) -> bytes | None:
        """The held message, from any gateway (None: no such item)."""
        return self._call(lambda: self.client.get(self._key("q", "content", item_id)))

    def quarantine_remove(self, item_id: str) -> None:
        def remove() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self._key("q", "item", item_id), self._key("q", "content", item_id))
            pipe.zrem(self._key("q", "index"), item_id)
            pipe.execute()

        self._call(remove)

    # -- sent-message registry ----------------------------------------------------------

    def sent_add(self, message_hash: str, sender: str, when: float, keep_seconds: float) -> None:
        # Expiry counts from now on Redis's clock; `when` is kept for the `since` filter.
        ttl_ms = max(1, int(keep_seconds * 1000))
        value = json.dumps([when, storable(sender)])
        self._call(lambda: self.client.set(self._key("sent", message_hash), value, px=ttl_ms))

    def sent_lookup(self, message_hash: str, since: float) -> str | None:
        raw = self._call(lambda: self.client.get(self._key("sent", message_hash)))
        if raw is None:
            return None
        when, sender = json.loads(raw)
        return str(sender) if when >= since else None

    # -- rate limits -------------------------------------------------------------------------

    def hit(self, keys: Sequence[str], window: float, amount: int = 1) -> list[int]:
        """Windowed counters shared by every gateway: one script call (EVALSHA) for all keys.

        Per key, `SET key 0 PX window NX` opens a window (with its expiry, on Redis's clock)
        only when none is open, and `INCRBY` counts in it; INCRBY keeps the key's TTL, so the
        window closes `window` seconds after its first hit however often it is hit. A script
        runs atomically: no key can expire between the two steps and be left without a TTL.
        (Chosen over MULTI/EXEC: one command and one reply instead of 2 per key + 2, which
        halves redis-py's CPU per call.)
        """
        if not keys:
            return []
        ttl_ms = max(1, int(window * 1000))
        names = [self._key("rate", key) for key in keys]
        if self._hit_script is None:
            self._hit_script = self.client.register_script(_HIT_SCRIPT)
        script = self._hit_script
        # redis-py's Script loads itself again on NOSCRIPT (a restarted or new primary).
        return [int(n) for n in self._call(lambda: script(keys=names, args=[ttl_ms, amount]))]

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()


def _dump_decision(d: DecisionRecord) -> str:
    return json.dumps([d.time, d.session, d.client, d.helo, d.sender, list(d.recipients), d.phase,
                       d.verdict, d.reply, list(d.findings)])


def _load_decision(raw: bytes) -> DecisionRecord:
    v: list[Any] = json.loads(raw)
    return DecisionRecord(v[0], v[1], v[2], v[3], v[4], tuple(v[5]), v[6], v[7], v[8], tuple(v[9]))


def _dump_item(item: QuarantineItem) -> str:
    return json.dumps([item.id, item.time, item.sender, list(item.recipients), item.reason, item.size, item.path])


def _load_item(raw: bytes) -> QuarantineItem:
    v: list[Any] = json.loads(raw)
    return QuarantineItem(v[0], v[1], v[2], tuple(v[3]), v[4], v[5], v[6])


def _matches(item: QuarantineItem, needle: str) -> bool:
    # Like SqliteStore's LIKE '%search%': case-insensitive substring of id, sender, recipients, reason.
    fields = (item.id, item.sender, item.reason, *item.recipients)
    return any(needle in f.casefold() for f in fields)
