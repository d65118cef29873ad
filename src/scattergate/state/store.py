"""The state store interface: what every backend (SQLite now, Redis later) provides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision, as kept for the dashboard and the CLI."""

    time: float
    session: str
    client: str
    helo: str
    sender: str
    recipients: tuple[str, ...]
    phase: str
    verdict: str
    reply: str
    findings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """A message held instead of delivered (or instead of bounced): kept on disk, indexed."""

    id: str
    time: float
    sender: str
    recipients: tuple[str, ...]
    reason: str
    size: int
    path: str


class StateStore(Protocol):
    def add(self, counters: dict[str, int], decisions: Sequence[DecisionRecord]) -> None:
        """Add counter increments and decisions in one batch (one transaction)."""

    def counters(self) -> dict[str, int]: ...

    def recent_decisions(self, limit: int = 50) -> list[DecisionRecord]: ...

    def quarantine_add(self, item: QuarantineItem) -> None: ...

    def quarantine_list(self, limit: int = 100, search: str = "") -> list[QuarantineItem]: ...

    def quarantine_get(self, item_id: str) -> QuarantineItem | None: ...

    def quarantine_remove(self, item_id: str) -> None: ...

    def sent_add(self, message_hash: str, sender: str, when: float, keep_seconds: float) -> None: ...

    def sent_lookup(self, message_hash: str, since: float) -> str | None: ...

    def hit(self, keys: Sequence[str], window: float, amount: int = 1) -> list[int]:
        """Windowed counters (rate limits): add `amount` to each key's count and return the
        counts after adding, in order. A key's window is fixed and starts at its first hit:
        `window` seconds later the count starts again from zero (Postfix anvil's rule). All
        keys of one call are counted in one round trip / transaction."""

    def close(self) -> None: ...
