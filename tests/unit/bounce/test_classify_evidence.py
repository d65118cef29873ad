"""Evidence the classifier needs beyond RFC structure (issue 18): old MTAs' prose, list-relayed
notices, content-filter notices, header-less auto-replies, challenge-response as plain mail."""

from __future__ import annotations

import pytest

from scattergate.bounce.classify import Kind, classify


def _msg(headers: str, body: str) -> bytes:
    return (headers.strip("\n") + "\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n\n"
            + body).encode("utf-8")


def test_not_a_valid_user_here_is_a_bounce_not_an_auto_reply() -> None:
    c = classify(_msg(
        "From: MAILER-DAEMON@mail.example.net\nTo: owner@lists.example.org\nSubject: failure notice",
        "Hi. This is the qmail-send program at mail.example.net.\n"
        "You sent mail to bob@example.net. That's not a valid user here.\n"
        "Thank you for your message; please check the address.\n"))
    assert c.kind is Kind.BOUNCE
    assert c.failed_recipients == ("bob@example.net",)


LIST_HEADERS = """\
Return-Path: <python-list-admin@lists.example.org>
From: "Jetmail System" <>
Sender: python-list-owner@lists.example.org
To: python-list-admin@lists.example.org
Subject: Mail Error
List-Id: General discussion <python-list.lists.example.org>
Precedence: bulk"""


def test_a_bounce_relayed_by_a_list_manager_to_its_admin_address_is_a_bounce() -> None:
    c = classify(_msg(LIST_HEADERS, "Your mail cannot be delivered to the following address(es):\n\n"
                                    " dylan (mail box space not enough)\n"))
    assert c.kind is Kind.BOUNCE


def test_the_same_words_posted_to_the_list_itself_are_not_a_bounce() -> None:
    headers = (LIST_HEADERS.replace('"Jetmail System" <>', "Carol <carol@example.com>")
               .replace("To: python-list-admin@", "To: python-list@"))
    c = classify(_msg(headers, "Your mail cannot be delivered to the following address(es): why do\n"
                               "I get this every time I post? Anyone seen this?\n"))
    assert c.kind is Kind.NONE


@pytest.mark.parametrize(("subject", "body"), [
    ("Virus found in a message you sent",
     "The message you sent to bob@example.net contained a virus (W32/Netsky) and was not delivered.\n"),
    ("Banned attachment",
     "The attachment invoice.pif was blocked by the content filter; your message was not delivered to "
     "bob@example.net.\n"),
])
def test_content_filter_notices_from_a_system_sender_are_bounces(subject: str, body: str) -> None:
    c = classify(_msg(f"From: postmaster@filter.example.net\nTo: alice@example.org\nSubject: {subject}", body))
    assert c.kind is Kind.BOUNCE
    assert c.failed_recipients == ("bob@example.net",)


def test_a_person_discussing_a_virus_is_not_a_bounce() -> None:
    c = classify(_msg("From: Dan <dan@example.com>\nTo: team@example.org\nSubject: Re: scanner",
                      "The mail I sent you yesterday contained a virus, sorry - delete it.\n"))
    assert c.kind is Kind.NONE


@pytest.mark.parametrize("subject", [
    "Automātiskā atbilde: Quarterly report",  # Latvian
    "Automatyczna odpowiedź: Quarterly report",  # Polish
    "Yahoo! Auto Response",
    "自动回复: Quarterly report",
])
def test_auto_reply_subjects_without_any_auto_reply_header(subject: str) -> None:
    c = classify(_msg(f"From: someone@mail.example.net\nTo: alice@example.org\nSubject: {subject}",
                      "Thanks.\n"))
    assert c.kind is Kind.AUTO_REPLY
    assert c.failed_recipients == ()


def test_an_auto_responder_x_mailer_is_an_auto_reply() -> None:
    c = classify(_msg("From: bob@example.net\nTo: alice@example.org\nSubject: Your message\n"
                      "X-Mailer: Vacation AutoResponder 2.1", "I read mail rarely.\n"))
    assert c.kind is Kind.AUTO_REPLY


def test_challenge_response_sent_as_a_plain_message() -> None:
    c = classify(_msg(
        "From: bob@example.net\nTo: alice@example.org\nSubject: hello",
        "I am protecting myself from receiving junk mail. Just this once, click the link below so I\n"
        "can receive your emails. You won't have to do this again.\n"
        "http://spamblocker.example.net/confirm?id=123\n"))
    assert c.kind is Kind.CHALLENGE


def test_a_person_quoting_challenge_wording_under_re_is_not_a_challenge() -> None:
    c = classify(_msg(
        "From: bob@example.net\nTo: alice@example.org\nSubject: Re: those spam blockers",
        "Mine says: just this once, click the link so I can receive your emails. You won't have to\n"
        "do this again. http://spamblocker.example.net/confirm?id=1 - annoying, isn't it?\n"))
    assert c.kind is Kind.NONE


def test_an_exchange_prefix_before_the_thread_topic_with_an_away_phrase_is_an_auto_reply() -> None:
    # A language the prefix table does not know: the structure (long phrase + ":" + the
    # conversation's Thread-Topic) and an away-phrase carry it together.
    c = classify(_msg("From: pat@example.net\nTo: alice@example.org\nSubject: Avtomatski odziv: Budget\n"
                      "Thread-Topic: Budget\nX-Auto-Response-Suppress: All",
                      "I am out of the office until Monday.\n"))
    assert c.kind is Kind.AUTO_REPLY
    assert "subject:prefix-before-thread-topic" in c.evidence


def test_a_short_reply_prefix_before_the_thread_topic_is_a_person() -> None:
    c = classify(_msg("From: pat@example.net\nTo: alice@example.org\nSubject: Odp: Budget\n"
                      "Thread-Topic: Budget", "I am out of the office until Monday, let's talk then.\n"))
    assert c.kind is Kind.NONE


def test_yahoo_bounce_mailer_header_supports_a_bounce() -> None:
    c = classify(_msg("From: MAILER-DAEMON@yahoo.example\nTo: alice@example.org\nSubject: Failure Notice\n"
                      "X-Yahoo-Newman-Property: bmbounce",
                      "Sorry, we were unable to deliver your message to the following address.\n\n"
                      "<bob@example.net>:\nRemote host said: 550 5.1.1 unknown user\n"))
    assert c.kind is Kind.BOUNCE
    assert "x-yahoo-newman-property:bmbounce" in c.evidence
    assert c.failed_recipients == ("bob@example.net",)


def _mixed(sender: str, subject: str, prose: str) -> bytes:
    return f"""From: {sender}
To: list-admin@lists.example.org
Subject: {subject}
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

--XX
Content-Type: text/plain

{prose}

--XX
Content-Type: text/plain

Received: from lists.example.org by mail.example.net; Mon, 1 Jan 2001 00:00:00 +0000
From: carol@example.com
To: list@lists.example.org
Subject: weekly news

hello all
--XX--
""".encode()


@pytest.mark.parametrize("subject", ["Mail Error", "Returned mail", "Undeliverable: weekly news"])
def test_prose_only_notice_with_the_original_as_a_text_part(subject: str) -> None:
    # Old gateways return the original as a second text/plain part, not message/rfc822.
    c = classify(_mixed("gw-admin@example.net", subject, "The following recipient is unknown: bob@example.net"))
    assert c.kind is Kind.BOUNCE
    assert "original-attached" in c.evidence
    assert c.failed_recipients == ("bob@example.net",)
    assert c.original_from == "carol@example.com"


def test_a_person_forwarding_a_message_as_a_text_part_is_not_a_bounce() -> None:
    c = classify(_mixed("dan@example.com", "Fwd: weekly news", "This one never reached bob@example.net, any idea?"))
    assert c.kind is Kind.NONE


def test_a_failed_mailbox_listed_by_local_part_alone_gets_the_reporting_domain() -> None:
    # AOL's old format: the screen name only, under MAILER-DAEMON@aol.example.
    c = classify(_msg(
        "Return-Path: <>\nFrom: Mail Delivery Subsystem <MAILER-DAEMON@AOL.example>\n"
        "To: list-bounces@lists.example.org\nSubject: Returned mail: User unknown",
        "Your mail to the following recipients could not be delivered because they are not\n"
        "accepting mail from list-bounces@lists.example.org:\n\tscreenname\n"))
    assert c.kind is Kind.BOUNCE
    assert c.failed_recipients == ("screenname@aol.example",)
