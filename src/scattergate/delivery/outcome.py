"""What happened to an accepted message when we tried to deliver it: an outcome, not a verdict.

Delivery reports facts ("the spool write took too long", "the downstream answered 550");
decision/outcomes.py alone turns them into the verdict and reply the client gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scattergate.model import Reply

# Where the message went (or was to go).
Route = Literal["relay", "spool", "maildir", "quarantine", "outbound", "deadline"]
# done: stored or taken; too_slow: out of its time budget; no_storage: disk or quota full;
# failed: any other local failure; answered: the downstream replied (see `reply`).
Result = Literal["done", "too_slow", "no_storage", "failed", "answered"]


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    route: Route
    result: Result
    id: str = ""  # the queue, quarantine or Maildir id when done
    reply: Reply | None = None  # the downstream's reply, for result "answered"

    @classmethod
    def answered(cls, reply: Reply) -> DeliveryOutcome:
        return cls("relay", "answered", reply=reply)
