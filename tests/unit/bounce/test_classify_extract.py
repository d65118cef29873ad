"""Failed-recipient extraction: normalised addresses, and never one the original's headers name
unless the notice names it as failed (issue 18)."""

from __future__ import annotations

import pytest

from scattergate.bounce.classify import Kind, classify
from scattergate.bounce.classify.extract import clean_address

NOTICE = """\
Return-Path: <>
From: System Administrator <postmaster@example.net>
To: list-bounces@lists.example.org
Subject: Undeliverable: weekly digest
MIME-Version: 1.0
Content-Type: text/plain

{report}

----- Original message -----
Return-Path: <list-bounces@lists.example.org>
Received: from lists.example.org by mx.example.net for <{envelope}>; Mon, 1 Jan 2024 00:00:00 +0000
From: Carol <carol@example.com>
To: Discussion <list@lists.example.org>
Cc: dave@example.com
List-Post: <mailto:list@lists.example.org>
Subject: weekly digest

text
"""


def _rcpts(report: str, envelope: str = "bob@example.net") -> tuple[str, ...]:
    c = classify(NOTICE.format(report=report, envelope=envelope).encode())
    assert c.kind in (Kind.BOUNCE, Kind.DSN)
    return c.failed_recipients


@pytest.mark.parametrize(("raw", "clean"), [
    ("SMTP=Bob@EXAMPLE.NET", "Bob@example.net"),
    ("rfc822;bob@example.net", "bob@example.net"),
    ("'bob@example.net", "bob@example.net"),
    ("<bob@Example.Net>.", "bob@example.net"),
    ("bob@localhost", None),
])
def test_addresses_are_normalised(raw: str, clean: str | None) -> None:
    assert clean_address(raw) == clean


def test_exchange_ims_smtp_prefix_is_removed() -> None:
    report = ("Your message did not reach some or all of the intended recipients.\n"
              "The following recipient(s) could not be reached:\n"
              "c=US;a= ;p=EXAMPLE;o=Nexus2;dda:SMTP=BOB@EXAMPLE.NET; on Fri, 4 Oct 2002\n")
    assert _rcpts(report) == ("BOB@example.net",)


def test_a_quoted_address_in_prose_loses_its_quote() -> None:
    assert _rcpts("The following message, addressed to 'bob@example.net',\nwas undeliverable.") == (
        "bob@example.net",)


def test_prose_addresses_lose_to_the_address_named_as_failed() -> None:
    report = ("Delivery to the following recipient failed permanently:\n\n    bob@example.net\n\n"
              "For help write to helpdesk@example.net or see how carol@example.com set it up;\n"
              "addresses here have the form firstname.lastname@example.net.\n")
    assert _rcpts(report) == ("bob@example.net",)


def test_the_originals_list_sender_and_cc_are_never_returned_from_prose() -> None:
    report = ("This message was sent to list@lists.example.org by carol@example.com with a copy to\n"
              "dave@example.com; it could not be delivered to bob@example.net because of a full mailbox.\n")
    assert _rcpts(report) == ("bob@example.net",)


def test_the_originals_to_is_returned_when_its_envelope_confirms_it() -> None:
    report = "Your message to dave@example.com was not delivered: mailbox unavailable.\n"
    assert _rcpts(report, envelope="dave@example.com") == ("dave@example.com",)


def test_postfix_expanded_from_gives_the_address_we_sent_to() -> None:
    report = ("   ----- The following addresses had permanent fatal errors -----\n"
              "bob@mailhost.example.net\n    (expanded from: bob@example.net)\n")
    assert _rcpts(report) == ("bob@example.net",)


def test_a_self_addressed_failure_named_in_postfix_form_is_returned() -> None:
    # The original was sent by carol to herself: "<carol@...>: reason" still names the failure.
    report = "<carol@example.com>: Name service error for domain example.com: Host not found\n"
    assert _rcpts(report, envelope="carol@example.com") == ("carol@example.com",)


def test_a_help_desk_named_as_a_contact_is_never_a_failed_recipient() -> None:
    # Named once after "contact", then again in a sentence of another language.
    report = ("The message returned below could not be delivered to one or more destinations.\n"
              "For further assistance, please contact <helpdesk@example.net>\n\n"
              "Bei Fragen: <helpdesk@example.net>\n\n"
              "Delivery to the following recipient failed permanently:\n\n    bob@example.net\n")
    assert _rcpts(report) == ("bob@example.net",)
    # With no failure named at all, the help desk is still not taken for one.
    assert "helpdesk@example.net" not in _rcpts(report.replace("    bob@example.net\n", ""))
