"""SPAMC/SPAMD codec against replies captured from spamd 4.0, thresholds, and X-Spam headers."""

from __future__ import annotations

import pytest

from scattergate.address import Address
from scattergate.checks import CheckContext
from scattergate.checks.scanners import ScanError, render_scan_headers
from scattergate.checks.spamd import SpamdResult, SpamdScanner, encode_request, parse_reply, trace_headers
from scattergate.config import SpamdConfig
from scattergate.decision.policy import Decider
from scattergate.model import Accept, Envelope, Finding, Reject, Session

GTUBE_REPLY = (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 55\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
               b"GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO")
HAM_REPLY = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 33\r\nSpam: False ; -0.0 / 5.0\r\n\r\nMSGID_SHORT,NO_RECEIVED,NO_RELAYS"
CHECK_REPLY = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 2.4 / 5.0\r\n\r\n"


def test_request_is_a_spamc_header_block() -> None:
    assert encode_request(1234) == b"SYMBOLS SPAMC/1.5\r\nContent-length: 1234\r\n\r\n"


def test_spam_reply_gives_score_required_and_symbols() -> None:
    result = parse_reply(GTUBE_REPLY)
    assert result == SpamdResult(1000.0, 5.0, ("GTUBE", "MSGID_SHORT", "NO_RECEIVED", "NO_RELAYS", "TVD_SPACE_RATIO"))


def test_ham_and_check_replies() -> None:
    assert parse_reply(HAM_REPLY).score == 0.0
    assert parse_reply(CHECK_REPLY) == SpamdResult(2.4, 5.0, ())


@pytest.mark.parametrize(("raw", "message"), [
    (b"SPAMD/1.0 76 Bad header line: BLAH SPAMC/1.5\r\n", "spamd error 76: Bad header line"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\n\r\nA", "Spam: header"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n", "Spam: header"),
    (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 99\r\nSpam: True ; 9.0 / 5.0\r\n\r\nA,B", "Content-length"),
    (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 9.0 / 5.0", "inside its headers"),
    (b"220 mail.example ESMTP\r\n", "unexpected spamd reply"),
    (b"", "unexpected spamd reply"),
    (b"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n", "bad spamd header line"),
])
def test_errors_and_garbage_raise(raw: bytes, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_reply(raw)


@pytest.mark.parametrize(("score", "result"), [(-1.0, "ham"), (4.9, "ham"), (5.0, "tagged"), (9.9, "tagged"),
                                                (10.0, "spam"), (1000.0, "spam")])
def test_our_thresholds_decide(score: float, result: str) -> None:
    scanner = SpamdScanner(SpamdConfig(tag_score=5.0, reject_score=10.0), "mx.example")
    finding = scanner.classify(SpamdResult(score, 5.0, ("A", "B")))
    assert (finding.result, finding.score) == (result, score)
    assert "tests=A,B" in finding.detail and "required=5" in finding.detail


def test_spam_is_rejected_550_tagged_accepted() -> None:
    spam = Decider().decide([Finding("spamd", "spam", "tests=GTUBE", 1000.0)])
    assert isinstance(spam, Reject) and str(spam.reply) == "550 5.7.1 Message refused as spam"
    assert isinstance(Decider().decide([Finding("spamd", "tagged", "tests=X", 6.0)]), Accept)


def test_x_spam_headers_for_tagged_and_ham() -> None:
    tagged = Finding("spamd", "tagged", "required=5 reject=10 tests=BAYES_99,URIBL_BLACK", 6.2)
    ham = Finding("rspamd", "ham", "action=no_action required=15 tests=ARC_NA", -0.5)
    headers = render_scan_headers("mx.example", [tagged, ham])
    assert headers == [
        ("X-Spam-Flag", "YES"),
        ("X-Spam-Status", "Yes, score=6.2 required=5 tests=BAYES_99,URIBL_BLACK scanner=spamd"),
        ("X-Spam-Status", "No, score=-0.5 required=15 tests=ARC_NA scanner=rspamd"),
    ]


def test_skipped_and_other_findings_render() -> None:
    findings = [Finding("spamd", "oversize", "600000 bytes, above max_size 524288"),
                Finding("clamav", "skipped", "no answer within 20 s"), Finding("spf", "pass", "")]
    assert render_scan_headers("mx.example", findings) == [
        ("X-Scan-Skipped", "spamd (600000 bytes, above max_size 524288)"),
        ("X-Scan-Skipped", "clamav (no answer within 20 s)"),
    ]


def test_trace_headers_give_spamassassin_the_client_and_cannot_be_injected() -> None:
    session = Session("192.0.2.7", helo="evil\r\nX-Injected: 1 (x)", esmtp=True)
    envelope = Envelope(Address("a", "sender.example"))
    trace = trace_headers(CheckContext(session, envelope, content=b""), "mx.example").decode()
    assert trace.startswith("Return-Path: <a@sender.example>\r\nReceived: from evilX-Injected: 1 x ([192.0.2.7])\r\n")
    assert "by mx.example (scattergate) with ESMTP id " + envelope.message_id in trace
    assert trace.count("\r\n") == 4 and "\r\n\r\n" not in trace
