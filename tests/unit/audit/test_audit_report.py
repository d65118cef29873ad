"""The report: verdict and exit code from the test statuses, and its two renderings."""

from __future__ import annotations

import json

from scattergate.audit.probe import Reply
from scattergate.audit.report import (
    AuditReport,
    BounceSeen,
    CheckResult,
    Status,
    render_text,
    to_json,
)


def report(*statuses: Status) -> AuditReport:
    return AuditReport("192.0.2.1:25", "example.org",
                       [CheckResult(f"t{i}", f"test {i}", s, "why") for i, s in enumerate(statuses)])


def test_exit_codes() -> None:
    assert report(Status.PASS, Status.PASS).exit_code == 0
    # A test not run (after-queue without --bounce-sender) proves nothing either.
    assert report(Status.PASS, Status.SKIPPED).exit_code == 2
    assert report(Status.PASS, Status.RISK).exit_code == 1
    assert report(Status.PASS, Status.ERROR).exit_code == 2
    # Refused for our HELO name or sender: no evidence about recipients, so never "safe".
    assert report(Status.PASS, Status.INCONCLUSIVE).exit_code == 2
    # A risk seen is a finding even when another test could not finish.
    assert report(Status.ERROR, Status.RISK).exit_code == 1
    assert report(Status.RISK).verdict == "backscatter risk"


def test_text_has_one_line_per_test_with_its_replies() -> None:
    r = report(Status.RISK, Status.PASS)
    r.tests[0].replies = [Reply("connect", 220, "mx ESMTP"), Reply("EHLO a.test", 250, "mx"),
                          Reply("RCPT TO:<x@example.org>", 250, "2.1.5 Ok")]
    r.tests[0].bounce = BounceSeen("", "127.0.0.1", "dsn", 0.99, ("5.1.1",), True, 2000)
    text = render_text(r)
    lines = text.splitlines()
    assert lines[:2] == ["scattergate audit of 192.0.2.1:25 for domain example.org", "greeting: 220 mx ESMTP"]
    assert not any("EHLO" in line or "connect" in line for line in lines)  # the greeting is shown once
    assert "RISK         test 0: why" in lines
    assert "             RCPT TO:<x@example.org> → 250 2.1.5 Ok" in lines
    assert any("dsn (confidence 0.99), status 5.1.1, names our probe" in line for line in lines)
    assert "PASS         test 1: why" in lines
    assert lines[-1].startswith("Verdict: BACKSCATTER RISK (1 of 2 tests)")


def test_multiline_reply_is_shown_on_one_line() -> None:
    assert str(Reply("connect", 220, "mx.example\nESMTP ready")) == "connect → 220 mx.example ESMTP ready"


def test_json() -> None:
    r = report(Status.PASS, Status.ERROR)
    r.tests[1].replies = [Reply("RCPT TO:<y@example.org>", 451, "4.3.0 try later")]
    data = json.loads(to_json(r))
    assert data["verdict"] == "incomplete" and data["exit_code"] == 2
    assert data["tests"][1] == {"name": "t1", "status": "ERROR", "explanation": "why",
                                "replies": [{"command": "RCPT TO:<y@example.org>", "code": 451,
                                             "text": "4.3.0 try later"}]}


def test_a_hostile_servers_text_reaches_no_terminal_raw() -> None:
    r = report(Status.PASS)
    r.tests[0].replies = [Reply("connect", 220, "mx\x1b]0;owned\x07 ESMTP"),
                          Reply("RCPT TO:<x@example.org>", 550, "5.1.1 caf\u00e9 \x1b[2J\x9b unknown")]
    r.tests[0].explanation = "refused (550 5.1.1 \x1b[2J)"
    text = render_text(r)
    assert not any(c in text for c in "\x1b\x07\x9b")
    assert "greeting: 220 mx\\x1b]0;owned\\x07 ESMTP" in text
    assert "RCPT TO:<x@example.org> → 550 5.1.1 caf\u00e9 \\x1b[2J\\x9b unknown" in text
