import email.utils

import pytest

from scattergate import model
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


def test_header_date_is_now_as_an_rfc5322_date_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000.2]
    monkeypatch.setattr(model.time, "time", lambda: now[0])
    monkeypatch.setattr(model, "_date_cache", (-1, ""))
    first = model.header_date()
    assert email.utils.parsedate_to_datetime(first).timestamp() == 1_800_000_000
    now[0] = 1_800_000_000.9  # the same second: the same text
    assert model.header_date() is first
    now[0] = 1_800_000_001.0  # the next second: a new one
    assert email.utils.parsedate_to_datetime(model.header_date()).timestamp() == 1_800_000_001


def test_new_ids_are_twelve_hex_digits_and_distinct_across_read_ahead_refills() -> None:
    from scattergate.model import _RandomBytes, new_id

    ids = [new_id() for _ in range(3 * _RandomBytes._PAGE // 6)]  # three refills of the read-ahead
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_are_unique_and_a_forked_child_does_not_repeat_its_parents() -> None:
    import os

    from scattergate.model import new_id

    new_id()  # the parent has a page of random bytes in hand
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, " ".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 65536).decode().split()
    os.close(read)
    parent = [new_id() for _ in range(50)]
    assert len(set(child) | set(parent)) == 100
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in parent)
