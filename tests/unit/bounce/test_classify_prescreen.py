"""The classifier's fast paths: literal pre-filters on the phrase patterns, the single-part parse,
the plain header-block and Content-Type readings, the header index, the From pre-check and the
status-code hint must never change a verdict. Ordinary mail that merely *talks* about
delivery failures stays `none`; real bounces with a normal-looking sender are still found."""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import random
import re
from email.message import Message
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from scattergate.bounce.classify import core as C
from scattergate.bounce.classify import mime as M
from scattergate.bounce.classify import rules as R
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


def _regex_words(text: str) -> frozenset[str]:
    """The vocabulary's definition: \\w runs, split also at ASCII digits."""
    return frozenset(re.findall(r"\w+", re.sub(r"[0-9]", " ", text)))


def test_words_ascii_fast_path_equals_regex() -> None:
    text = "".join(chr(i) for i in range(128)) + " don't stop_me now 5.1.1 <a@b.c> mailbox2"
    assert R.words(text).words == _regex_words(text)
    text = "naïve café don’t «quote» 配信できません 5.1.1 x٣y"
    assert R.words(text).words == _regex_words(text)


def test_words_of_repeated_lines_equal_regex() -> None:
    # Generated mail (smtp-source) repeats its first line; the copies are skipped, not their words.
    smtp_source = "".join(f"la de da de da {i}.\n" for i in range(1, 401))
    assert R.words(smtp_source).words == frozenset({"la", "de", "da"})
    rnd = random.Random(20261204)
    alphabet = ["la", "de", "da", " ", "  ", "\n", "1", "x", ".", "lade", "é", "\t"]
    for _ in range(2000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40)))
        assert R.words(text).words == _regex_words(text), repr(text)


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


# --- the cheaper readings are exact: header block, Content-Type, From, status-code hint ---------

FIELD_LINES = st.one_of(
    st.sampled_from([
        b"From: a@example.org\n", b"Subject: hi\n", b"subject: second\n", b"X-Empty:\n", b"X-Blank: \t \n",
        b"X-Tab:\tvalue\t\n", b" continued\n", b"\tcontinued\n", b" \n", b"From nobody Mon Jan 1 2024\n",
        b"Bad line\n", b":nameless\n", b"X-8bit: caf\xc3\xa9 \xff\n", b"X-VT: a\x0bb\x0cc\x1cd\n",
        b"X-Colon:: a:b\n", b"Name With Space: x\n", b"X-CR: a\rb\n", b"Content-Type: multipart/mixed\n",
        b"Content-Type: text/plain; charset=utf-8\n", b"X-\xe9: latin name\n", b"\n",
    ]),
    st.builds(lambda name, value: b"X-" + name.encode() + b": " + value.encode("utf-8", "surrogateescape") + b"\n",
              st.text(alphabet="abcAZ09-_.", min_size=1, max_size=6),
              st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)),
)


def _header_block(lines: list[bytes]) -> tuple[str, bytes]:
    data = b"".join(lines)
    return data.decode("ascii", "surrogateescape"), data + b"\n"


@settings(max_examples=500, deadline=None)
@given(st.lists(FIELD_LINES, max_size=12))
def test_plain_header_block_builds_what_the_parser_builds(lines: list[bytes]) -> None:
    head, data = _header_block(lines)
    fast = M._plain_header_block(head)
    if fast is None:
        return  # declined: the stdlib parser reads it
    full = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(data, headersonly=True)
    assert not full.defects and full.get_payload() == ""
    assert list(fast.raw_items()) == list(full.raw_items())
    assert fast.get_unixfrom() == full.get_unixfrom()
    assert fast.__dict__[M._INDEX] == M._field_index(full)


def test_plain_header_block_takes_ordinary_headers() -> None:
    head = ("From sender@example.org Mon Jan  1 00:00:00 2024\nReceived: from a\n\tby b;\n  Mon\n"
            "Subject:\n folded\nX-Empty:\nFrom: a@example.org\n")
    fast = M._plain_header_block(head)
    full = email.message_from_string(head + "\n", policy=email.policy.compat32)
    assert fast is not None
    assert fast.items() == full.items() and fast.get_unixfrom() == full.get_unixfrom()
    assert M._plain_header_block(head + "Odd-But-Fine: value\n") is not None
    assert M._plain_header_block(" folded first\n" + head) is None
    assert M._plain_header_block(head + "no colon\n") is None


_BLANK = st.sampled_from(["", " ", "\t", "  "])
_PARAM = st.tuples(_BLANK, st.sampled_from(["charset", "CharSet", "report-type", "format", "", "charset*", "x"]),
                   _BLANK, st.sampled_from(["=", "", "=="]), _BLANK,
                   st.sampled_from(["utf-8", "KOI8-R", '"utf-8"', "<utf-8>", "a\\b", "", "é", "(c)", "x;y"]),
                   _BLANK).map("".join)
CONTENT_TYPES = st.one_of(
    st.builds(lambda ctype, params: ctype + "".join(";" + p for p in params),
              st.sampled_from(["text/plain", "TEXT/HTML", " multipart/report ", "bogus", "a/b/c", ""]),
              st.lists(_PARAM, max_size=4)),
    st.lists(st.sampled_from(["text/plain", ";", " ", "charset", "=", "utf-8", '"', "\\", "*", "<", ">"]),
             max_size=10).map("".join),
)


@settings(max_examples=800, deadline=None)
@given(CONTENT_TYPES, st.sampled_from(["charset", "report-type"]))
def test_plain_param_and_content_type_equal_the_message_methods(value: str, name: str) -> None:
    msg = Message()
    msg["X-First"] = "x"
    msg["Content-Type"] = value
    msg["Content-Type"] = "text/plain; charset=second"  # only the first field counts
    fast = M._plain_param(msg, name)
    if fast is not M._NOT_PLAIN:
        assert fast == msg.get_param(name)
    assert M._content_type(msg) == msg.get_content_type().lower()
    want = msg.get_param(name)
    if isinstance(want, tuple):  # RFC 2231 triple
        want = want[2]
    assert M.param(msg, name) == str(want or "").strip().lower()


def test_plain_param_reads_the_usual_forms() -> None:
    for value, want in (("text/plain; charset=ISO-8859-1", "ISO-8859-1"), ("text/plain;; CharSet = x ;", "x"),
                        ("text/plain; format=flowed", None), ("text/plain; charset", "")):
        msg = Message()
        msg["Content-Type"] = value
        assert M._plain_param(msg, "charset") == want == msg.get_param("charset")
    msg = Message()
    msg["Content-Type"] = 'text/plain; charset="utf-8"'
    assert M._plain_param(msg, "charset") is M._NOT_PLAIN  # quoting: the stdlib reads it
    assert M._plain_param(Message(), "charset") is None


_FROM_PIECES = st.lists(st.sampled_from([
    "Mail", "mail", "Delivery", " ", "System", "MAILER", "-", "Daemon", "Ma\\iler", "Po\\st", "post", "master",
    "MAİLER", "ſystem", "ıNTERNET", "Microsoft", "Outlook", '"', "<", ">", "@", "x@example.org", "(", ")",
    '"Ma\\iler-Daemon" ', '"Po\\stmaster" ', '"Sy\\stem Administrator"', "(Mail Delivery System)",
    ":", ";", ",", "\\", "relay", "postmaster@", "bounces@", ".", "mailer-daemon@example.net",
]), max_size=8).map("".join)


FROM_PARTS = st.one_of(
    _FROM_PIECES,
    st.builds(lambda display, addr: display + addr, _FROM_PIECES,
              st.sampled_from([" <relay@example.net>", "<x@y>", "", " relay@example.net", " <postmaster@x.y>"])),
)


@settings(max_examples=1500, deadline=None)
@given(FROM_PARTS)
def test_system_sender_equals_the_parseaddr_reading(from_: str) -> None:
    display, _addr = parseaddr(from_)
    want = bool(R.SYSTEM_SENDER.search(from_) or R.SYSTEM_DISPLAY.match(display or ""))
    assert C._system_sender(from_) is want


def test_deeply_nested_from_still_reaches_parseaddr() -> None:
    # parseaddr recurses on comments and groups and fails on deep nesting; the classifier's
    # answer to such input (an "error" verdict) must not change because it was skipped.
    for from_ in ("(" * 5000, "a:" * 5000):
        try:
            parseaddr(from_)
        except RecursionError:
            with pytest.raises(RecursionError):
                C._system_sender(from_)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="245.3a٣\n ", max_size=16), st.integers(min_value=0, max_value=18))
def test_enhanced_hint_finds_what_the_plain_pattern_finds(text: str, end: int) -> None:
    plain = re.compile(r"[245]\.\d")
    assert bool(R.ENHANCED_HINT.search(text, 0, end)) is bool(plain.search(text, 0, end))


KEY_LINES = st.lists(st.sampled_from([
    "From: a@example.net", "to: b", " > Subject: hi", "\tDate: today", ">>>>From: q", "     From: deep",
    "ſubject: long s", "Received: x", "", "plain words", "cc:c", "x: y", "Message-ID: <x@y>",
]), max_size=20)


@settings(max_examples=500, deadline=None)
@given(KEY_LINES)
def test_key_header_lines_are_the_multiline_matches(lines: list[str]) -> None:
    body = "\n".join(lines)
    want = [m.start() for m in M._KEY_HEADER_LINE.finditer(body)]
    assert list(M._key_header_lines(body)) == want


@pytest.mark.parametrize("name", sorted(GUARDED))
def test_every_cover_literal_is_indexed_under_one_of_its_words(name: str) -> None:
    g = GUARDED[name]
    seen: list[str] = []
    for key, entries in g.by_word.items():
        for inner, _ends, lit in entries:
            assert key in inner
            seen.append(lit)
    for key, entries in g.by_piece.items():
        for _inner, rest, lit in entries:
            assert key == "" or (key in re.findall(r"\w+", lit) and key not in rest)
            seen.append(lit)
    assert sorted(seen) == sorted(g.cover or ())


# --- verdicts that sit exactly on a threshold, decided by a fast path ------------------------------

def test_display_name_alone_makes_the_bounce_threshold() -> None:
    # system-sender (2, from the display name only) + bounce subject (3) = _BOUNCE_MIN.
    for from_ in ('"Mail Delivery System" <relay@example.net>', '"Ma\\iler-Daemon" <relay@example.net>',
                  "MAİLER DAEMON <relay@example.net>", "relay@example.net (Mail Delivery System)"):
        raw = _msg(f"From: {from_}\nTo: a@example.org\nSubject: Undeliverable: report", "Hello.\n")
        c = classify(raw, "relay@example.net")
        assert c.kind is Kind.BOUNCE and c.evidence == ("system-sender", "subject:bounce"), from_
    plain = _msg("From: Relay <relay@example.net>\nTo: a@example.org\nSubject: Undeliverable: report", "Hello.\n")
    assert classify(plain, "relay@example.net") == classify(plain, "relay@example.net")
    assert classify(plain, "relay@example.net").kind is Kind.NONE
    assert classify(plain, "relay@example.net").confidence == 0.24  # 3 of 5: the full path's value


def test_folded_auto_reply_header_makes_the_auto_reply_threshold() -> None:
    head = "From: Judy <judy@example.org>\nTo: a@example.org\nSubject: hello\nX-Autoreply:\n {}"
    assert classify(_msg(head.format("yes"), "Hi.\n"), "judy@example.org").kind is Kind.AUTO_REPLY
    assert classify(_msg(head.format("no"), "Hi.\n"), "judy@example.org") == C.Classification(Kind.NONE, 0.0, ())


def test_challenge_header_makes_the_challenge_threshold() -> None:
    raw = _msg("From: Sam <sam@example.org>\nTo: a@example.org\nSubject: hi\nX-Challenge: 1\n"
               "Auto-Submitted: auto-generated", "Hi.\n")
    c = classify(raw, "sam@example.org")
    assert c.kind is Kind.CHALLENGE and c.evidence == ("auto-submitted:auto-generated", "x-challenge")


def test_enhanced_status_code_is_the_deciding_point() -> None:
    # null sender 2 + failure reason 1 + inline original 1 + enhanced code 1 = _BOUNCE_MIN.
    body = ("user unknown {}\n\nFrom: alice@example.org\nTo: bob@example.net\nSubject: hello\n"
            "Message-ID: <o-1@example.org>\n\nhi\n")
    head = "From: Relay <relay@example.net>\nTo: alice@example.org\nSubject: report"
    c = classify(_msg(head, body.format("5.1.1")), "")
    assert c.kind is Kind.BOUNCE and "enhanced-status-code" in c.evidence and c.status_codes == ("5.1.1",)
    assert classify(_msg(head, body.format("5-1-1")), "") == C.Classification(Kind.NONE, 0.32, ())


def test_charset_parameter_decides_whether_the_phrase_is_read() -> None:
    # postmaster (2) + one strong phrase (3), readable only when the body is decoded as KOI8-R.
    body = "Ваше сообщение не было доставлено адресату.\n".encode("koi8-r")
    for content_type in (b"text/plain; charset=koi8-r", b"text/plain;; CharSet = KOI8-R ;",
                         b'text/plain; charset="koi8-r"'):
        raw = (b"From: postmaster@example.net\nTo: alice@example.org\nSubject: report\n"
               b"Content-Type: " + content_type + b"\n\n" + body)
        assert classify(raw, "postmaster@example.net").kind is Kind.BOUNCE, content_type
    wrong = b"From: postmaster@example.net\nSubject: report\nContent-Type: text/plain; charset=utf-8\n\n" + body
    assert classify(wrong, "postmaster@example.net").kind is Kind.NONE


# --- end to end: every fast path switched off gives the same answers -------------------------------

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "data"


def _reference_system_sender(from_: str) -> bool:
    display, _addr = parseaddr(from_)
    return bool(R.SYSTEM_SENDER.search(from_) or R.SYSTEM_DISPLAY.match(display or ""))


def _slow_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(M, "_plain_header_block", lambda head: None)
    monkeypatch.setattr(M, "_plain_param", lambda msg, name: M._NOT_PLAIN)
    monkeypatch.setattr(M, "_content_type", lambda msg: msg.get_content_type().lower())
    monkeypatch.setattr(M, "_key_header_lines",
                        lambda body: (m.start() for m in M._KEY_HEADER_LINE.finditer(body)))
    monkeypatch.setattr(C, "has_field", lambda msg, names: True)
    monkeypatch.setattr(C, "_system_sender", _reference_system_sender)
    monkeypatch.setattr(R, "ENHANCED_HINT", re.compile(r"[245]\.\d"))
    monkeypatch.setattr(R.Guarded, "windows", lambda self, text, folded, vocabulary: None)
    monkeypatch.setattr(R.Screened, "may_match", lambda self, folded: True)
    monkeypatch.setattr(R, "enhanced_matches", lambda text: R.ENHANCED.finditer(text))
    monkeypatch.setattr(R, "smtp_codes", lambda text: [m.group(1) for m in R.SMTP_CODE.finditer(text)])


def test_fast_paths_change_no_classification_on_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".eml", ".txt"))[::4]
    assert len(paths) > 250
    messages = [p.read_bytes() for p in paths]
    senders = (None, "", "someone@example.net")
    fast = [classify(raw, s) for raw in messages for s in senders]
    _slow_paths(monkeypatch)
    slow = [classify(raw, s) for raw in messages for s in senders]
    assert fast == slow


@pytest.mark.parametrize(("body", "confidence"), [
    ("Notes attached.\n", 0.0),
    ("I am out of the office today.\n", 0.2),  # auto-reply 2 of 4
    ("Please verify that you are a human.\n", 0.24),  # challenge 3 of 5
    ("Please verify that you are a human: https://x.example/confirm?id=1\n", 0.32),  # challenge 4 of 5
    ("The parcel was blocked at customs.\n", 0.08),  # bounce 1 of 5
    ("Delivery failed for the parcel, mailbox full.\n", 0.32),  # bounce 4 of 5: one point short
])
def test_body_points_below_every_threshold_still_set_the_confidence(body: str, confidence: float) -> None:
    # No kind reaches its threshold, yet the `none` confidence is computed from the best score,
    # body phrases included: a shortcut that skipped the phrase work on a header-only bound
    # would have to reproduce exactly these values.
    raw = _msg("From: Ann <ann@example.org>\nTo: b@example.org\nSubject: notes", body)
    assert classify(raw, "ann@example.org") == C.Classification(Kind.NONE, confidence, ())


# Pieces SMTP reply codes are written with and near: the prefixes SMTP_CODE knows (in odd
# case), codes and near-codes, whitespace (Unicode too), the lead characters, digits, words.
_CODE_PIECES = ["said:", "said", "SAID", "error", "Error:", "response", "response:", "reply", "REPLY:",
                "smtp;", "code", "code:", "(", "[", "answered", "returned", "status:", "reason:", "ſaid",
                "550", "421", "250", "599", "560", "5505", "4.2.1", "5.1.1", "0", "9", "x", "word",
                " ", "  ", "\t", "\n", "\r", "\u00a0", "\u2003", "\x1c", "-", ":", ";", "<", ">", "#", "*", "."]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_CODE_PIECES), max_size=40))
def test_smtp_codes_equal_the_whole_text_finditer(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert R.smtp_codes(text) == [m.group(1) for m in R.SMTP_CODE.finditer(text)]


def test_smtp_codes_on_bounce_wording() -> None:
    text = ("host mx.example.org said: 550 5.1.1 <a@example.org>... User unknown\n"
            "  421-try later\nremote server returned 554 and error:\n\n 552 too big\n"
            "ref 5501 ignored (451 later)")
    assert R.smtp_codes(text) == [m.group(1) for m in R.SMTP_CODE.finditer(text)]
    assert R.smtp_codes(text) == ["550", "421", "554", "552", "451"]


_ENHANCED_PIECES = ["5", "4", "2", "1", "0", "9", ".", "..", "5.1.1", "4.2.", "2.0.0", "5.7.1234", "x", " ",
                    "\n", "-", "#", "1.", "\u0665", "Status:", "smtp;"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_ENHANCED_PIECES), max_size=40))
def test_enhanced_matches_equal_the_whole_text_finditer(pieces: list[str]) -> None:
    text = "".join(pieces)
    got = [(m.span(), m.group(1)) for m in R.enhanced_matches(text)]
    assert got == [(m.span(), m.group(1)) for m in R.ENHANCED.finditer(text)]


_SCREENED = [name for name in dir(R) if name.startswith("S_")]
_SUBJECT_PIECES = ["Re: ", "Auto", "AUTOMATIC ", "reply", "Out of Office", "ooo", "Abwesenheit", "vacation",
                   "respon", "ſ", "İ", "K", "confirm ", "your ", "message ", "held", "is pending", "challenge",
                   "(delivery failed)", ": non remis", ": undeliverable", "returned to sender", "x-bounces@",
                   "owner-list@", "-request@", "Automātiskā atbilde:", "自动回复", " ", ":", "\t", "a", "@"]


@pytest.mark.parametrize("name", _SCREENED)
@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(st.sampled_from(_SUBJECT_PIECES), max_size=12))
def test_screened_pattern_equals_plain_pattern(name: str, pieces: list[str]) -> None:
    screened = getattr(R, name)
    text = "".join(pieces)
    for method in ("search", "match"):
        got = getattr(screened, method)(text, R.fold(text))
        want = getattr(screened.pattern, method)(text)
        assert (got and got.span()) == (want and want.span())


@given(st.lists(st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\r\n", b"x", b"ab ", b"\xff"]), max_size=40))
def test_line_ends_are_normalised_as_crlf_then_cr_to_lf(pieces: list[bytes]) -> None:
    from scattergate.bounce.classify.mime import normalise

    raw = b"".join(pieces)
    assert normalise(raw) == raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
