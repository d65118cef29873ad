"""Delivery outcomes → verdicts: what the client is told after we tried to deliver.

The one place that words these replies. A stored message is accepted (250) only once it is
durable; any local trouble is a tempfail (4xx), so the client keeps the message and retries —
never an accept we could not honour. The downstream's own reply is handed back as it is, its
class deciding the verdict (before-queue relay: its refusal is ours).
"""

from __future__ import annotations

from scattergate.delivery.outcome import DeliveryOutcome
from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Tempfail, Verdict

_STORED = {
    "spool": (Accept, "Ok: queued as {id}"),
    "maildir": (Accept, "Ok: delivered as {id}"),
    "quarantine": (Quarantine, "Ok: held as {id}"),
}
NO_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
_TROUBLE = {
    ("spool", "too_slow"): Reply(451, "4.3.0", "Spool write too slow, try again later"),
    ("spool", "failed"): Reply(451, "4.3.0", "Spool write failed, try again later"),
    ("maildir", "too_slow"): Reply(451, "4.3.0", "Local delivery too slow, try again later"),
    ("maildir", "failed"): Reply(451, "4.3.0", "Local delivery failed, try again later"),
    ("quarantine", "too_slow"): Reply(451, "4.3.0", "Cannot store the message now, try again later"),
    ("quarantine", "failed"): Reply(451, "4.3.0", "Cannot store the message now, try again later"),
    ("outbound", "failed"): Reply(451, "4.3.0", "Cannot record the message now, try again later"),
    ("deadline", "too_slow"): Reply(451, "4.4.3", "Out of time, try again later"),
}
_FALLBACK = Reply(451, "4.3.0", "Delivery failed, try again later")


def verdict_for(outcome: DeliveryOutcome, findings: tuple[Finding, ...]) -> Verdict:
    """The verdict on an accepted message after delivery, carrying the findings behind it."""
    if outcome.result == "answered":
        assert outcome.reply is not None
        return reply_verdict(outcome.reply, findings + (relay_finding(outcome.reply),))
    if outcome.result == "done":
        kind, text = _STORED[outcome.route]
        return kind(Reply(250, "2.0.0", text.format(id=outcome.id)), findings)
    if outcome.result == "no_storage":
        return Tempfail(NO_STORAGE, findings)
    return Tempfail(_TROUBLE.get((outcome.route, outcome.result), _FALLBACK), findings)


def relay_finding(reply: Reply) -> Finding:
    """The downstream's answer, kept with the decision (dashboard, log line)."""
    return Finding("delivery", "relayed" if reply.code < 300 else "refused", str(reply))


def reply_verdict(reply: Reply, findings: tuple[Finding, ...]) -> Verdict:
    """Someone else's reply as our verdict: its class decides."""
    if reply.code < 300:
        return Accept(reply, findings)
    if reply.code < 500:
        return Tempfail(reply, findings)
    return Reject(reply, findings)
