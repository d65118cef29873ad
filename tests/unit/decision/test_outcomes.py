"""Delivery outcomes → verdicts (decision/outcomes.py): the one place these replies are worded."""

from __future__ import annotations

import pytest

from scattergate.decision.outcomes import verdict_for
from scattergate.delivery.outcome import DeliveryOutcome
from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Tempfail

FINDINGS = (Finding("spf", "pass", "smtp.mailfrom=a@example.net"),)


@pytest.mark.parametrize(("outcome", "kind", "text"), [
    (DeliveryOutcome("spool", "done", "Q1"), Accept, "250 2.0.0 Ok: queued as Q1"),
    (DeliveryOutcome("maildir", "done", "M1"), Accept, "250 2.0.0 Ok: delivered as M1"),
    (DeliveryOutcome("quarantine", "done", "H1"), Quarantine, "250 2.0.0 Ok: held as H1"),
    (DeliveryOutcome("spool", "too_slow"), Tempfail, "451 4.3.0 Spool write too slow, try again later"),
    (DeliveryOutcome("spool", "no_storage"), Tempfail, "452 4.3.1 Insufficient system storage"),
    (DeliveryOutcome("maildir", "no_storage"), Tempfail, "452 4.3.1 Insufficient system storage"),
    (DeliveryOutcome("maildir", "failed"), Tempfail, "451 4.3.0 Local delivery failed, try again later"),
    (DeliveryOutcome("quarantine", "failed"), Tempfail, "451 4.3.0 Cannot store the message now, try again later"),
    (DeliveryOutcome("outbound", "failed"), Tempfail, "451 4.3.0 Cannot record the message now, try again later"),
    (DeliveryOutcome("deadline", "too_slow"), Tempfail, "451 4.4.3 Out of time, try again later"),
])
def test_local_outcomes(outcome: DeliveryOutcome, kind: type, text: str) -> None:
    verdict = verdict_for(outcome, FINDINGS)
    assert type(verdict) is kind and str(verdict.reply) == text
    assert verdict.findings == FINDINGS  # the findings behind the acceptance stay with it


@pytest.mark.parametrize(("reply", "kind", "result"), [
    (Reply(250, "2.0.0", "Ok: queued as X"), Accept, "relayed"),
    (Reply(451, "4.3.0", "try later"), Tempfail, "refused"),
    (Reply(550, "5.1.1", "no such user"), Reject, "refused"),
])
def test_the_downstream_reply_is_handed_back_by_its_class(reply: Reply, kind: type, result: str) -> None:
    verdict = verdict_for(DeliveryOutcome.answered(reply), FINDINGS)
    assert type(verdict) is kind and verdict.reply == reply
    assert verdict.findings == FINDINGS + (Finding("delivery", result, str(reply)),)


def test_every_trouble_is_a_tempfail_never_an_accept() -> None:
    for route in ("relay", "spool", "maildir", "quarantine", "outbound", "deadline"):
        for result in ("too_slow", "no_storage", "failed"):
            assert isinstance(verdict_for(DeliveryOutcome(route, result), ()), Tempfail)  # type: ignore[arg-type]
