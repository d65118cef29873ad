"""Administering the spool from outside the gateway: list, flush, hold, release, delete.

The operations of `scattergate queue` (Postfix's mailq, postqueue -f, postsuper -h/-H/-d).
Every change is made under the message's flock, the same lock the schedulers claim a
message with (delivery/spool.py), so it is never made while a worker delivers that message:
a message being delivered is waited for (at most `wait` seconds), then changed or found gone.
A held message keeps its place in the spool with `held` set in its state; the schedulers
skip it until it is released.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from scattergate.delivery.spool import Claim, Spool, SpoolEntry
from scattergate.delivery.wake import wake_all

_RETRY_CLAIM = 0.05  # seconds between attempts at a message a worker is delivering


class QueueError(Exception):
    """An operation that cannot be done (unknown id, message busy for too long)."""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: str
    arrival: float
    sender: str
    recipients: tuple[str, ...]  # still to be delivered
    last_error: str  # the last reply for a pending recipient; "" before the first attempt
    attempts: int
    next_attempt: float
    held: bool

    @classmethod
    def of(cls, entry: SpoolEntry) -> "QueuedMessage":
        pending = entry.pending()
        errors = [r.reply for r in pending if r.reply]
        return cls(entry.id, entry.arrival, entry.sender, tuple(r.address for r in pending),
                   errors[0] if errors else "", entry.attempts, entry.next_attempt, entry.held)

    def to_json(self, now: float) -> dict[str, object]:
        return {"id": self.id, "arrival": self.arrival, "age": round(now - self.arrival, 1),
                "sender": self.sender, "recipients": list(self.recipients), "last_error": self.last_error,
                "attempts": self.attempts, "next_attempt": None if self.held else self.next_attempt,
                "held": self.held}


def listing(spool: Spool) -> list[QueuedMessage]:
    """The spooled messages, oldest first (read without locks: a snapshot, like mailq)."""
    return sorted((QueuedMessage.of(entry) for entry in spool.entries()), key=lambda m: (m.arrival, m.id))


def _claim(spool: Spool, message_id: str, wait: float, sleep: Callable[[float], None] = time.sleep) -> Claim:
    """The message's lock, waiting up to `wait` seconds for a delivery in progress."""
    deadline = time.monotonic() + wait
    while True:
        claim = spool.claim(message_id, read=False)
        if claim is not None:
            return claim
        if not spool.message_path(message_id).exists():
            raise QueueError(f"no queued message {message_id!r}")
        if time.monotonic() >= deadline:
            raise QueueError(f"message {message_id} is being delivered; try again (or pass a longer --wait)")
        sleep(_RETRY_CLAIM)


def _change(spool: Spool, message_id: str, wait: float, change: Callable[[SpoolEntry], None]) -> None:
    claim = _claim(spool, message_id, wait)
    try:
        change(claim.entry)
        claim.save()
    finally:
        claim.release()


def hold(spool: Spool, message_id: str, *, wait: float) -> None:
    def put_on_hold(entry: SpoolEntry) -> None:
        entry.held = True

    _change(spool, message_id, wait, put_on_hold)


def release(spool: Spool, message_id: str, *, wait: float) -> None:
    """Take a message off hold, due at once (wake the schedulers after: `wake`)."""
    def due_now(entry: SpoolEntry) -> None:
        entry.held = False
        entry.next_attempt = 0.0

    _change(spool, message_id, wait, due_now)


def delete(spool: Spool, message_id: str, *, wait: float) -> None:
    """Remove a message without delivering it and without a DSN (postsuper -d)."""
    claim = _claim(spool, message_id, wait)
    claim.finish()


def flush(spool: Spool, message_ids: Iterable[str]) -> tuple[int, int]:
    """Make the given messages due now (held ones stay held); returns (made due, skipped as
    being delivered right now: nothing to hurry)."""
    due = busy = 0
    for message_id in message_ids:
        claim = spool.claim(message_id, read=False)
        if claim is None:
            busy += spool.message_path(message_id).exists()
            continue
        try:
            entry = claim.entry
            if entry.held or not entry.pending():
                continue
            if entry.next_attempt > 0.0:
                entry.next_attempt = 0.0
                claim.save()
            due += 1
        finally:
            claim.release()
    return due, busy


def wake(spool: Spool) -> int:
    """Ask the running schedulers to look at the spool now; how many were reached."""
    return wake_all(spool.root)
