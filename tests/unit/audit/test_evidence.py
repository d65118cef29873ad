"""What a refusal is about: only refusals about the recipient are evidence of safety."""

from __future__ import annotations

import pytest

from scattergate.audit.evidence import Concern, concern, definitely_about_recipient, enhanced_status
from scattergate.audit.probe import Reply

RCPT = "RCPT TO:<sg-audit-1@example.org>"


@pytest.mark.parametrize("command, code, text, expected", [
    # Postfix's delayed evaluation: HELO, client and sender restrictions answer the RCPT.
    (RCPT, 504, "5.5.2 <short>: Helo command rejected: need fully-qualified hostname", Concern.HELO),
    (RCPT, 554, "5.7.1 <unknown[192.0.2.1]>: Client host rejected: Access denied", Concern.CLIENT),
    (RCPT, 553, "5.7.1 <a@b.test>: Sender address rejected: not logged in", Concern.SENDER),
    (RCPT, 454, "4.7.1 <x@example.org>: Relay access denied", Concern.RELAY),
    (RCPT, 550, "5.1.1 <x@example.org>: Recipient address rejected: User unknown in relay recipient table",
     Concern.RECIPIENT),
    (RCPT, 450, "4.2.0 <x@example.org>: Recipient address rejected: Greylisted, see http://x", Concern.GREYLISTING),
    # Enhanced status codes alone (RFC 3463).
    (RCPT, 550, "5.1.1 mailbox unavailable", Concern.RECIPIENT),
    (RCPT, 550, "5.2.1 mailbox disabled", Concern.RECIPIENT),
    (RCPT, 553, "5.1.8 bad sender domain", Concern.SENDER),
    (RCPT, 501, "5.5.2 syntax error", Concern.PROTOCOL),
    ("DATA", 554, "5.6.0 message refused", Concern.CONTENT),
    ("DATA", 554, "5.7.1 Message refused as spam", Concern.OTHER),
    # No enhanced code: the wording, then the bare code and the command it answers.
    (RCPT, 550, "No such user here", Concern.RECIPIENT),
    (RCPT, 550, "Requested action not taken", Concern.RECIPIENT),
    ("MAIL FROM:<a@b.test>", 553, "not allowed", Concern.SENDER),
    (RCPT, 503, "need MAIL first", Concern.PROTOCOL),
    ("DATA", 550, "refused", Concern.OTHER),
])
def test_concern(command: str, code: int, text: str, expected: Concern) -> None:
    assert concern(Reply(command, code, text)) is expected


def test_enhanced_status() -> None:
    assert enhanced_status(Reply(RCPT, 550, "5.1.1 <x>: no")) == (5, 1, 1)
    assert enhanced_status(Reply(RCPT, 550, "User unknown 5.1.1")) is None


@pytest.mark.parametrize("text, definite", [
    ("4.1.1 <x>: Recipient address rejected: unverified address: host said: 550 5.1.1 unknown", True),
    ("4.2.0 <x>: Recipient address rejected: Greylisted", False),
    ("4.7.1 <x>: Recipient address rejected: try again", False),
    ("4.1.1 <short>: Helo command rejected: whatever", False),
    ("4.3.0 mail system full", False),
])
def test_a_lasting_temporary_refusal_counts_only_when_it_names_the_recipient(text: str, definite: bool) -> None:
    assert definitely_about_recipient(Reply(RCPT, 450, text)) is definite
