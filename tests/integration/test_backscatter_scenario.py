"""The backscatter-emitted scenario (DESIGN.md measure 1), with real Postfix, DNS and smtp-sink.

DSNs to senders we could not prove genuine must be 0; proven senders must be told of every
failure; what could not be bounced is in the quarantine.
"""

from __future__ import annotations

import pytest

from tests.conftest import require_binary
from tests.support.scenario import Scenario


@pytest.fixture(scope="module")
def outcome():  # type: ignore[no-untyped-def]
    for binary in ("postfix", "smtp-sink", "openssl"):
        require_binary(binary)
    scenario = Scenario()
    scenario.start()
    try:
        yield scenario.run(rounds=2)
    finally:
        scenario.stop()


def test_no_dsn_ever_goes_to_an_unproven_sender(outcome) -> None:  # type: ignore[no-untyped-def]
    assert outcome.dsn_to_forged == 0, outcome


def test_every_proven_sender_is_told_of_its_failure(outcome) -> None:  # type: ignore[no-untyped-def]
    assert outcome.legit_failures == 4  # two rounds x (an SPF-pass and a DKIM-signed sender)
    assert outcome.legit_told == outcome.legit_failures, outcome


def test_forged_mail_and_backscatter_are_refused_in_the_dialogue(outcome) -> None:  # type: ignore[no-untyped-def]
    # Per round: two SPF -all forgeries, and one bounce to an address without our BATV tag.
    assert outcome.refused_in_dialogue == 6


def test_unbounceable_failures_are_quarantined(outcome) -> None:  # type: ignore[no-untyped-def]
    # Per round: softfail spam to an unknown user.
    assert outcome.quarantined == 2


def test_good_mail_is_delivered(outcome) -> None:  # type: ignore[no-untyped-def]
    # Per round: softfail spam to bob, SPF-pass to alice, DKIM-signed to bob.
    assert outcome.delivered == 6
