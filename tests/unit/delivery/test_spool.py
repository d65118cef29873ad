from pathlib import Path

from scattergate.delivery.scheduler import retry_delay
from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry
from scattergate.config import SpoolConfig


def entry(**kw) -> SpoolEntry:  # type: ignore[no-untyped-def]
    return SpoolEntry(sender="a@example.net", recipients=[SpooledRecipient("u@example.org", ["FAILURE"], "rfc822;u@example.org")],
                      arrival=1000.0, **kw)


def test_put_then_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry(spf_result="pass", ret="FULL", envid="QQ1")
    spool.put(e, b"Subject: x\r\n\r\nbody\r\n")
    (loaded,) = list(spool.entries())
    assert loaded == e
    claim = spool.claim(e.id)
    assert claim is not None and claim.content() == b"Subject: x\r\n\r\nbody\r\n"


def test_a_claimed_message_cannot_be_claimed_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    spool.put(e, b"x\r\n")
    first = spool.claim(e.id)
    assert first is not None
    assert spool.claim(e.id) is None
    first.entry.attempts = 3
    first.save()  # rewriting the state must not let a second claim in
    assert spool.claim(e.id) is None
    first.release()
    second = spool.claim(e.id)
    assert second is not None and second.entry.attempts == 3


def test_finish_removes_the_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    spool.put(e, b"x\r\n")
    claim = spool.claim(e.id)
    assert claim is not None
    claim.finish()
    assert len(spool) == 0 and list(tmp_path.iterdir()) == []
    assert spool.claim(e.id) is None


def test_recover_removes_only_unacknowledged_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    spool.put(e, b"x\r\n")
    (tmp_path / "orphan.eml").write_bytes(b"content written, state not yet: never acknowledged")
    (tmp_path / ".abc.json.tmp").write_bytes(b"{")
    assert spool.recover() == 2
    assert spool.ids() == [e.id]


def test_unreadable_state_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "bad.eml").write_bytes(b"x")
    (tmp_path / "bad.json").write_bytes(b"not json")
    assert list(spool.entries()) == []
    assert spool.claim("bad") is None


def test_retry_intervals_double_up_to_the_cap() -> None:
    config = SpoolConfig(retry_initial=300, retry_max=3600)
    assert [retry_delay(n, config) for n in (1, 2, 3, 4, 5, 6)] == [300, 600, 1200, 2400, 3600, 3600]


def test_quarantine_get_finds_by_id_even_when_a_newer_item_mentions_it(tmp_path: Path) -> None:
    from scattergate.state.sqlite import SqliteStore
    from scattergate.state.store import QuarantineItem

    store = SqliteStore(tmp_path / "s.sqlite3")
    store.quarantine_add(QuarantineItem("abc123", 1.0, "a@x.example", ("u@example.org",), "spam", 10, "/p1"))
    store.quarantine_add(QuarantineItem("zzz999", 2.0, "abc123@x.example", ("u@example.org",), "x", 10, "/p2"))
    item = store.quarantine_get("abc123")
    assert item is not None and item.path == "/p1"
    assert store.quarantine_get("nope") is None
    store.close()


def test_quarantine_cleans_up_when_the_index_fails_and_reads_shared_copies(tmp_path: Path) -> None:
    import pytest

    from scattergate.delivery.quarantine import Quarantine
    from scattergate.state.sqlite import SqliteStore

    class BrokenIndex(SqliteStore):
        def quarantine_add(self, item):  # type: ignore[no-untyped-def]
            raise OSError("state store unavailable")

    broken = Quarantine(tmp_path / "q1", BrokenIndex(tmp_path / "a.sqlite3"))
    with pytest.raises(OSError):
        broken.hold(b"Subject: x\r\n\r\nx\r\n", "a@x.example", ["u@example.org"], "test")
    assert list((tmp_path / "q1").iterdir()) == []  # nothing unindexed left behind

    class SharedStore(SqliteStore):
        def quarantine_content(self, item_id: str) -> bytes | None:
            return b"held elsewhere" if item_id == "other" else None

    store = SharedStore(tmp_path / "b.sqlite3")
    quarantine = Quarantine(tmp_path / "q2", store)
    from scattergate.state.store import QuarantineItem

    remote = QuarantineItem("other", 1.0, "a@x.example", ("u@example.org",), "spam", 14, "/elsewhere/other.eml")
    assert quarantine.content(remote) == b"held elsewhere"
