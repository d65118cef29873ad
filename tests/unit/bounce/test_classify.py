"""Hand-written cases for the bounce classifier: each kind, extraction, and hostile input."""

from __future__ import annotations

from scattergate.bounce.classify import Classification, Kind, classify

DSN = b"""\
Return-Path: <>
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: alice@example.org
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce-1@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.example.net.
<bob@example.net>: host mx.example.net said: 550 5.1.1 user unknown

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; bob@example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: user unknown

--B
Content-Type: message/rfc822

Return-Path: <alice@example.org>
Received: from a.example.org by mx.example.net; Mon, 1 Jan 2024 00:00:00 +0000
Received: from b.example.org by a.example.org; Mon, 1 Jan 2024 00:00:00 +0000
From: Alice <alice@example.org>
To: bob@example.net
Subject: hello
Message-ID: <orig-1@example.org>

hi
--B--
"""

QMAIL = b"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.jp
To: alice@example.org
Subject: failure notice

Hi. This is the qmail-send program at mx.example.jp.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<carol@example.jp>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <alice@example.org>
Received: from a.example.org by mx.example.jp; Mon, 1 Jan 2024 00:00:00 +0000
Message-ID: <orig-2@example.org>
From: alice@example.org
To: carol@example.jp
Subject: hi

hello
"""


def test_rfc3464_dsn_and_its_fields() -> None:
    c = classify(DSN)
    assert c.kind is Kind.DSN and c.is_bounce and c.confidence >= 0.9
    assert "message/delivery-status" in c.evidence
    assert c.failed_recipients == ("bob@example.net",)
    assert c.original_message_id == "orig-1@example.org"
    assert c.original_sender == "alice@example.org"
    assert c.original_from == "alice@example.org"
    assert "5.1.1" in c.status_codes and "550" in c.status_codes
    assert len(c.received_chain) == 2 and c.received_chain[0].startswith("from a.example.org")


def test_qmail_bounce_with_inline_original() -> None:
    c = classify(QMAIL)
    assert c.kind is Kind.BOUNCE
    assert c.failed_recipients == ("carol@example.jp",)
    assert c.original_message_id == "orig-2@example.org"
    assert c.received_chain and "mx.example.jp" in c.received_chain[0]
    assert "5.1.1" in c.status_codes


def test_exim_x_failed_recipients() -> None:
    msg = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.com>\nTo: a@example.org\n"
           b"Subject: Mail delivery failed: returning message to sender\n"
           b"X-Failed-Recipients: d@example.com\nAuto-Submitted: auto-replied\n\n"
           b"This message was created automatically by mail delivery software.\n\n"
           b"A message that you sent could not be delivered to one or more of its\n"
           b"recipients. This is a permanent error. The following address(es) failed:\n\n"
           b"  d@example.com\n    SMTP error from remote mail server after RCPT TO:<d@example.com>:\n"
           b"    550 5.1.1 No such user\n")
    c = classify(msg)
    assert c.kind is Kind.BOUNCE  # a bounce that says auto-replied is still a bounce
    assert c.failed_recipients == ("d@example.com",)
    assert "x-failed-recipients" in c.evidence


def test_rfc3834_auto_reply() -> None:
    msg = (b"From: Bob <bob@example.net>\nTo: alice@example.org\nSubject: Out of Office: hello\n"
           b"Auto-Submitted: auto-replied\nIn-Reply-To: <orig-3@example.org>\n\n"
           b"I am out of the office until Monday.\n")
    c = classify(msg)
    assert c.kind is Kind.AUTO_REPLY and not c.is_bounce
    assert c.original_message_id == "orig-3@example.org"
    assert c.failed_recipients == ()


def test_vacation_subjects_in_other_languages() -> None:
    for subject in ("Abwesenheitsnotiz: Termin", "Automatic reply: hi", "Auto: hi",
                    "R\xe9ponse automatique : hi".encode("latin-1").decode("latin-1")):
        msg = f"From: x@example.de\nTo: y@example.org\nSubject: {subject}\n\nDanke.\n".encode()
        assert classify(msg).kind is Kind.AUTO_REPLY, subject


def test_human_reply_to_an_out_of_office_is_not_one() -> None:
    msg = (b"From: kevin@example.ie\nTo: list@example.ie\nList-Id: <list.example.ie>\n"
           b"Subject: [ILUG] Re: [ILUG] Dermot is out of the office.\nPrecedence: bulk\n\n"
           b"> I will be out of the office starting 02/08/2002\n\nan automated message to the list.\n")
    assert classify(msg).kind is Kind.NONE


def test_challenge_response() -> None:
    msg = (b"From: bob@example.net\nTo: alice@example.org\nAuto-Submitted: auto-replied\n"
           b"Subject: Please confirm your message\n\n"
           b"I use a challenge-response system. Before your message can be delivered,\n"
           b"please confirm that you are a human: https://cr.example.net/confirm?id=abc\n")
    c = classify(msg)
    assert c.kind is Kind.CHALLENGE
    assert "confirm-link" in c.evidence


def test_arf_feedback_report() -> None:
    msg = (b"From: fbl@isp.example\nTo: abuse@example.org\nSubject: FW: hi\nMIME-Version: 1.0\n"
           b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\n\n'
           b"--F\nContent-Type: text/plain\n\nThis is an abuse report\n\n"
           b"--F\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\n"
           b"Version: 1\nOriginal-Mail-From: <alice@example.org>\nOriginal-Rcpt-To: <eve@isp.example>\n\n"
           b"--F\nContent-Type: message/rfc822\n\nFrom: alice@example.org\nTo: eve@isp.example\n"
           b"Message-ID: <orig-4@example.org>\nSubject: hi\n\nhi\n--F--\n")
    c = classify(msg)
    assert c.kind is Kind.FEEDBACK
    assert c.failed_recipients == ("eve@isp.example",)
    assert c.original_sender == "alice@example.org"
    assert c.original_message_id == "orig-4@example.org"


def test_mailing_list_post_and_newsletter_are_none() -> None:
    post = (b"From: someone@example.com\nTo: list@lists.example.com\nSubject: Returned mail handling?\n"
            b"List-Id: <list.lists.example.com>\nPrecedence: list\n\n"
            b"How do I handle returned mail and user unknown errors in Postfix?\n")
    news = (b"From: News <news@shop.example>\nTo: a@example.org\nSubject: Our weekly deals\n"
            b"List-Unsubscribe: <mailto:unsub@shop.example>\nPrecedence: bulk\n\nBuy things.\n")
    assert classify(post).kind is Kind.NONE
    assert classify(news).kind is Kind.NONE


def test_envelope_sender_argument_is_a_hint() -> None:
    msg = (b"From: postmaster@mx.example.com\nTo: a@example.org\nSubject: Undeliverable: hi\n\n"
           b"Delivery has failed to these recipients or groups:\nz@example.com\n")
    assert classify(msg, envelope_sender="").kind is Kind.BOUNCE
    assert "null-sender" in classify(msg, envelope_sender="").evidence


# --- hostile input: every call must return a Classification, never raise --------------------

def _ok(c: object) -> Classification:
    assert isinstance(c, Classification)
    assert 0.0 <= c.confidence <= 1.0
    return c


def test_empty_and_tiny_inputs() -> None:
    for raw in (b"", b"\n", b"x", b"\r\r\r", b":", b"From: \n\n", b"\x00\xff" * 3):
        assert _ok(classify(raw)).kind is Kind.NONE


def test_cr_only_and_lf_only_and_crlf_line_ends_agree() -> None:
    lf = _ok(classify(QMAIL))
    cr = _ok(classify(QMAIL.replace(b"\n", b"\r")))
    crlf = _ok(classify(QMAIL.replace(b"\n", b"\r\n")))
    assert lf.kind is cr.kind is crlf.kind is Kind.BOUNCE
    assert lf.failed_recipients == cr.failed_recipients == crlf.failed_recipients


def test_broken_mime_boundaries() -> None:
    broken = DSN.replace(b'boundary="B"', b'boundary="NOPE"')
    _ok(classify(broken))
    truncated = DSN[: DSN.index(b"Status:")]
    assert _ok(classify(truncated)).is_bounce
    no_boundary = DSN.replace(b'; boundary="B"', b"")
    _ok(classify(no_boundary))


def test_eight_bit_junk_and_bad_charsets() -> None:
    junk = bytes(range(256)) * 50
    _ok(classify(junk))
    msg = (b"From: MAILER-DAEMON@x\nSubject: =?x-unknown?B?////?= \xff\xfe\n"
           b"Content-Type: text/plain; charset=no-such-charset\nContent-Transfer-Encoding: base64\n\n"
           b"!!!not base64\xff\xfe\x80\n")
    _ok(classify(msg))
    _ok(classify(QMAIL.replace(b"hello", b"\xe9\xe8\x00\x81" * 100)))


def test_missing_headers_and_header_only() -> None:
    _ok(classify(b"Subject: failure notice\n"))
    _ok(classify(b"\n\nbody without headers: Final-Recipient: rfc822; a@b.c\n"))


def test_five_megabyte_message_returns() -> None:
    big = DSN.replace(b"hi\n--B--", b"hi\n" + (b"A" * 76 + b"\n") * 70000 + b"--B--")
    assert len(big) > 5_000_000
    assert _ok(classify(big)).kind is Kind.DSN
    flat = b"From: a@example.org\nSubject: x\n\n" + b"x" * 5_000_000
    assert _ok(classify(flat)).kind is Kind.NONE


def test_two_hundred_deep_nesting_returns() -> None:
    head = b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
    parts = []
    for i in range(200):
        parts.append(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i))
    inner = b"Content-Type: text/plain\n\nThis is the mail system at host x.\n"
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(200)))
    _ok(classify(head + b"".join(parts) + inner + tail))


def test_many_parts_returns() -> None:
    body = b"".join(b"--M\nContent-Type: text/plain\n\npart %d\n" % i for i in range(5000))
    msg = b'From: a@example.org\nContent-Type: multipart/mixed; boundary="M"\n\n' + body + b"--M--\n"
    _ok(classify(msg))


def test_str_input_is_accepted() -> None:
    assert _ok(classify(QMAIL.decode())).kind is Kind.BOUNCE
