"""The classifier's fast paths: literal pre-filters on the phrase patterns, the single-part parse
and the header index must never change a verdict. Ordinary mail that merely *talks* about
delivery failures stays `none`; real bounces with a normal-looking sender are still found."""

from __future__ import annotations

import base64
import email
import email.policy
import random
import re

import pytest

from scattergate.bounce import classify_mime as M
from scattergate.bounce import classify_rules as R
from scattergate.bounce.classify import Kind, classify

GUARDED = {
    "strong": R.G_BOUNCE_PHRASE_STRONG,
    "weak": R.G_BOUNCE_PHRASE_WEAK,
    "auto": R.G_AUTO_BODY,
    "challenge": R.G_CHALLENGE_BODY,
    "confirm": R.G_CONFIRM_URL,
}


def _msg(headers: str, body: str) -> bytes:
    return (headers.strip("\n") + "\n\n" + body).encode("utf-8")


# --- ordinary mail stays ordinary ---------------------------------------------------------------

def test_person_with_delivery_failure_subject_is_none() -> None:
    raw = _msg("""
From: Carol Smith <carol@example.org>
To: dev-team@example.org
Subject: delivery failure analysis for the Q3 shipping pipeline
Message-ID: <abc@example.org>
Date: Mon, 1 Jan 2024 10:00:00 +0000
""", "Hi all,\n\nthe parcel delivery failure rate went up last week; I attach the numbers.\n\nCarol\n")
    c = classify(raw, "carol@example.org")
    assert c.kind is Kind.NONE


def test_human_reply_about_an_undeliverable_message_is_none() -> None:
    raw = _msg("""
From: Dan <dan@example.com>
To: erin@example.net
Subject: Re: Undeliverable: meeting notes
""", "> Your message could not be delivered to bob@example.com\n\nYes, Bob left the company; use Frank.\n")
    assert classify(raw, "dan@example.com").kind is Kind.NONE


def test_list_post_discussing_bounces_is_none() -> None:
    raw = _msg("""
From: Grace <grace@example.com>
To: postfix-users@example.org
Subject: [postfix-users] bounces say "user unknown" - why?
List-Id: <postfix-users.example.org>
List-Unsubscribe: <mailto:postfix-users-leave@example.org>
Precedence: list
""", "My server logs say: delivery failed, user unknown, mailbox full. The returned mail has\n"
     "status 5.1.1. Why does this happen? Message could not be delivered, it says.\n")
    assert classify(raw, "grace@example.com").kind is Kind.NONE


def test_multipart_newsletter_is_none() -> None:
    raw = _msg("""
From: News <news@shop.example>
To: user@example.org
Subject: This week's offers
List-Unsubscribe: <https://shop.example/unsub>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="X"
""", "--X\nContent-Type: text/plain\n\nOffers! Out of office furniture sale.\n"
     "--X\nContent-Type: text/html\n\n<p>Offers! <b>Out of office</b> furniture sale.</p>\n--X--\n")
    assert classify(raw, "bounce-123@shop.example").kind is Kind.NONE


# --- real notifications are still found ------------------------------------------------------

BOUNCE_BODY = """\
This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<bob@example.net>: host mx.example.net[192.0.2.1] said: 550 5.1.1 <bob@example.net>:
    Recipient address rejected: User unknown in local recipient table

--- Original message follows ---
Return-Path: <alice@example.org>
From: Alice <alice@example.org>
To: bob@example.net
Subject: hello
Message-ID: <orig-42@example.org>
Date: Mon, 1 Jan 2024 00:00:00 +0000

hello Bob
"""


def test_bounce_from_a_normal_looking_sender_is_found() -> None:
    # No null sender, no MAILER-DAEMON, no bounce subject, no report MIME type: only the words.
    raw = _msg("""
From: IT Operations <it-ops@example.net>
To: alice@example.org
Subject: about your message
""", BOUNCE_BODY)
    c = classify(raw, "it-ops@example.net")
    assert c.is_bounce
    assert c.failed_recipients == ("bob@example.net",)
    assert c.original_message_id == "orig-42@example.org"


def test_upper_case_and_odd_case_bounce_wording_is_found() -> None:
    raw = _msg("""
From: Postmaster <postmaster@example.net>
To: alice@example.org
Subject: notice
""", BOUNCE_BODY.replace("This is the mail system at host", "THIS IS THE MAIL SYSTEM AT HOST")
         .replace("could not\nbe delivered", "COULD NOT\nBE DELIVERED"))
    assert classify(raw, None).is_bounce


def test_base64_latin1_bounce_body_is_found() -> None:
    body = base64.encodebytes(BOUNCE_BODY.replace("sorry", "sörry").encode("latin-1")).decode()
    raw = _msg("""
From: relay@example.net
To: alice@example.org
Subject: report
MIME-Version: 1.0
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: base64
""", body)
    assert classify(raw, "relay@example.net").is_bounce


def test_null_sender_alone_still_gets_full_analysis() -> None:
    ordinary = _msg("""
From: Heidi <heidi@example.org>
To: ivan@example.net
Subject: lunch
""", "See you at noon.\n")
    # Not a notification by itself, but the null sender is scored (confidence > 0) ...
    c = classify(ordinary, "")
    assert c.kind is Kind.NONE and c.confidence > 0
    assert classify(ordinary, "heidi@example.org").confidence == 0
    # ... and with bounce wording in the body it is a bounce.
    bounce = _msg("""
From: Heidi <heidi@example.org>
To: ivan@example.net
Subject: lunch
""", "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
     "<bob@example.net>: 550 5.1.1 user unknown\n")
    assert classify(bounce, "").is_bounce


def test_vacation_reply_from_a_person_is_found() -> None:
    raw = _msg("""
From: Judy <judy@example.org>
To: alice@example.org
Subject: Away until Monday
""", "Thank you for your message. I am currently out of the office until Monday\n"
     "with limited access to email.\n")
    assert classify(raw, "judy@example.org").kind is Kind.AUTO_REPLY


# --- the fast paths are exact -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(GUARDED))
def test_every_phrase_pattern_has_a_literal_filter(name: str) -> None:
    g = GUARDED[name]
    assert g.cover and min(map(len, g.cover)) >= 3
    assert g.width is not None  # bounded and assertion-free: searched in windows


def test_unbounded_or_anchored_patterns_are_searched_whole() -> None:
    assert R.Guarded(re.compile(r"(?:delivery failed\s*:.*)", re.I)).width is None
    assert R.Guarded(re.compile(r"(?:^delivery failed)", re.I | re.M)).width is None
    assert R.Guarded(re.compile(r"(?:\bdelivery failed)", re.I)).width is None


def _phrases(g: R.Guarded) -> list[str]:
    return sorted(g.cover or ())


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_guarded_search_equals_plain_search(name: str) -> None:
    g = GUARDED[name]
    rnd = random.Random(20240501 + len(name))
    filler = ("the message was sent to your office, please confirm; http://x.example/verify "
              "5.1.1 550 mailbox user delivered failed returned out of away said: ").split()
    pieces = _phrases(g) + [
        "mail delivery failed", "host mx.example said:", "i am out of the office", "user unknown",
        "please verify that you are a human", "https://c.example/confirm?x=1",
        "MAİLER-DAEMON", "ſpam", "DELIVERY STATUS NOTIFICATION", "Ünzustellbar",
    ]
    for _ in range(300):
        words = [rnd.choice(filler) for _ in range(rnd.randint(0, 60))]
        for _ in range(rnd.randint(0, 3)):
            p = rnd.choice(pieces)
            p = "".join(ch.upper() if rnd.random() < 0.3 else ch for ch in p)
            words.insert(rnd.randint(0, len(words)), p)
        sep = rnd.choice([" ", "\n", "  ", " - "])
        text = sep.join(words) + "x" * rnd.randint(0, 400)
        folded = R.fold(text)
        vocab = R.words(folded)
        want = [(m.start(), m.end(), m.group(0)) for m in g.pattern.finditer(text)]
        got = [(m.start(), m.end(), m.group(0)) for m in g.finditer(text, folded, vocab)]
        assert got == want, text
        assert g.exists(text, folded, vocab) is (g.pattern.search(text) is not None), text


def test_fold_keeps_length_and_matches_ignorecase() -> None:
    text = "MAİLER ſpam ΣΑΣ Kelvin ı ẞ Ünzustellbar"
    assert len(R.fold(text)) == len(text)
    # Every character re.IGNORECASE equates with a literal folds to the literal's fold.
    for a, b in (("İ", "i"), ("ſ", "s"), ("ı", "i"), ("K", "k"), ("ς", "σ"), ("Σ", "σ")):
        assert re.fullmatch(re.escape(b), a, re.IGNORECASE)
        assert R.fold(a) == R.fold(b)


def test_words_ascii_fast_path_equals_regex() -> None:
    text = "".join(chr(i) for i in range(128)) + " don't stop_me now 5.1.1 <a@b.c>"
    assert R.words(text).words == frozenset(re.findall(r"\w+", text))
    text = "naïve café don’t «quote» 配信できません"
    assert R.words(text).words == frozenset(re.findall(r"\w+", text))


@pytest.mark.parametrize("raw", [
    b"From: a@example.org\nSubject: hi\n\nbody line 1\nbody line 2\n",
    b"From a@example.org Mon Jan  1 00:00:00 2024\nFrom: a@example.org\n\nmbox style\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\nX-8bit: caf\xc3\xa9 \xff\n\n8-bit \xff body\n",
    b"Subject: folded\n continuation\nContent-Type: text/plain; charset=utf-8\n\n\nleading blank\n",
    b"Content-Type: text/html\n\n<p>hi</p>",
    b"From: a@example.org\n\n",
])
def test_single_part_parse_equals_full_parse(raw: bytes) -> None:
    fast = M._parse_single_part(raw)
    full = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert fast is not None
    assert fast.items() == full.items()
    assert fast.get_payload() == full.get_payload()
    assert fast.get_unixfrom() == full.get_unixfrom()


@pytest.mark.parametrize("raw", [
    b"From: a@example.org\nContent-Type: multipart/mixed; boundary=B\n\n--B\n\nx\n--B--\n",
    b"From: a@example.org\nContent-Type: message/rfc822\n\nFrom: b@example.org\n\nx\n",
    b" leading continuation\nFrom: a@example.org\n\nx\n",  # header defect
    b"From: a@example.org\nthis is not a header\n\nx\n",  # missing separator
    b"From: a@example.org\nSubject: no body at all\n",
])
def test_single_part_parse_declines_anything_unusual(raw: bytes) -> None:
    assert M._parse_single_part(raw) is None
    assert M.parse(raw) is not None  # the full parse takes over


def test_header_index_returns_the_first_field() -> None:
    msg = M.parse(b"Subject: one\nsubject: two\nX-Failed-Recipients: a@example.org\n\nbody\n")
    assert M.header(msg, "Subject") == "one"
    assert M.header(msg, "SUBJECT") == msg.get("subject")
    assert M.header(msg, "x-failed-recipients") == "a@example.org"
    assert M.header(msg, "Missing") == ""
