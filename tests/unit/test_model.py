import pytest

from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Tempfail


def test_reject_cannot_carry_a_4xx_code() -> None:
    with pytest.raises(ValueError):
        Reject(Reply(451, "4.7.1", "later"))


def test_tempfail_cannot_carry_a_5xx_code() -> None:
    with pytest.raises(ValueError):
        Tempfail(Reply(550, "5.1.1", "no"))


def test_accept_and_quarantine_need_2xx() -> None:
    with pytest.raises(ValueError):
        Accept(Reply(550, "5.1.1", "no"))
    with pytest.raises(ValueError):
        Quarantine(Reply(451, "4.0.0", "no"))


def test_enhanced_status_must_match_the_code_class() -> None:
    with pytest.raises(ValueError):
        Reply(550, "4.1.1", "mismatch")


def test_reply_text_is_one_line() -> None:
    with pytest.raises(ValueError):
        Reply(550, "5.1.1", "two\r\nlines")


def test_reply_formats_and_parses() -> None:
    reply = Reply(550, "5.1.1", "User unknown")
    assert str(reply) == "550 5.1.1 User unknown"
    assert Reply.parse("550 5.1.1 User unknown") == reply
    assert Reply.parse("554 Go away") == Reply(554, "", "Go away")


def test_finding_key_and_text() -> None:
    finding = Finding("recipient", "unknown", "x@example.org", 1.5)
    assert finding.key == "recipient.unknown"
    assert str(finding) == "recipient.unknown(+1.5)[x@example.org]"
