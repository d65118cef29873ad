"""The state store interface: what every backend (SQLite now, Redis later) provides.

Also the one rule for text a backend keeps: fields come from the client (HELO, addresses) and
may hold bytes that were not UTF-8, carried as surrogates by `surrogateescape`. No backend can
encode those, and one such field used to fail the whole batch of a flush, so every backend
stores `storable(...)` text: what arrived, with each such byte written as `\\xNN`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Protocol, Sequence

from scattergate.logfmt import escape_surrogate


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


_log = logging.getLogger(__name__)


def storable(value: object) -> str:
    """Text every backend can encode: lone surrogates become `\\xNN` (`\\uNNNN` if not from a byte)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(escape_surrogate(char) for char in text)


def storable_decision(d: DecisionRecord) -> DecisionRecord:
    """The decision as a backend keeps it: every text field `storable`, the time a float."""
    texts = (d.session, d.client, d.helo, d.sender, d.phase, d.verdict, d.reply, *d.recipients, *d.findings)
    if type(d.time) is float and all(type(text) is str for text in texts):
        try:
            # One encode for all (UTF-8 refuses any lone surrogate, joined or not): the usual
            # record is storable as it is, and every flush asked this field by field.
            "".join(texts).encode("utf-8")
            return d
        except UnicodeEncodeError:
            pass
    return DecisionRecord(
        time=float(d.time), session=storable(d.session), client=storable(d.client),
        helo=storable(d.helo), sender=storable(d.sender),
        recipients=tuple(storable(r) for r in d.recipients), phase=storable(d.phase),
        verdict=storable(d.verdict), reply=storable(d.reply),
        findings=tuple(storable(f) for f in d.findings),
    )


def storable_batch(
    counters: dict[str, int], decisions: Sequence[DecisionRecord]
) -> tuple[dict[str, int], list[DecisionRecord]]:
    """A flush's batch as a backend writes it. A record that cannot be made storable at all
    is logged and left out on its own: it never takes the others down with it."""
    clean: dict[str, int] = {}
    for name, amount in counters.items():
        try:
            key = storable(name)
            clean[key] = clean.get(key, 0) + int(amount)
        except (TypeError, ValueError, OverflowError) as exc:
            _log.error("counter %s not stored: %s", _safe_repr(name), exc)
    records: list[DecisionRecord] = []
    for d in decisions:
        try:
            records.append(storable_decision(d))
        except (TypeError, ValueError, OverflowError) as exc:
            _log.error("decision not stored (%s): %s", exc, _safe_repr(d))
    return clean, records


def _safe_repr(value: object) -> str:
    return repr(value)[:500]  # repr escapes surrogates and control characters


def storable_item(item: QuarantineItem) -> QuarantineItem:
    return dataclasses.replace(item, sender=storable(item.sender), reason=storable(item.reason),
                               recipients=tuple(storable(r) for r in item.recipients))


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
