import asyncio
import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import pytest

from scattergate.delivery.scheduler import retry_delay
from scattergate.delivery.spool import SPARE_DIR, Claim, Spool, SpooledRecipient, SpoolEntry, SpoolWriter
from scattergate.config import SpoolConfig


def entry(**kw) -> SpoolEntry:  # type: ignore[no-untyped-def]
    return SpoolEntry(sender="a@example.net", recipients=[SpooledRecipient("u@example.org", ["FAILURE"], "rfc822;u@example.org")],
                      arrival=1000.0, **kw)


def queued_files(root: Path) -> list[str]:
    """What is in the spool, without the files kept for reuse (spare/)."""
    return sorted(p.name for p in root.iterdir() if p.name != SPARE_DIR)


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
    assert len(spool) == 0 and queued_files(tmp_path) == []
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
    (tmp_path / "bad.msg").write_bytes(b"not json\ncontent")
    (tmp_path / "worse.msg").write_bytes(b"no state line at all")
    assert list(spool.entries()) == []
    assert spool.claim("bad") is None and spool.claim("worse") is None


def test_one_file_per_message_and_a_changed_state_supersedes_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    spool.put(e, b"Subject: x\r\n\r\nbody\r\n")
    assert [p.name for p in tmp_path.iterdir()] == [f"{e.id}.msg"]
    claim = spool.claim(e.id)
    assert claim is not None
    claim.entry.attempts, claim.entry.next_attempt = 2, 5000.0
    claim.save()
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{e.id}.json", f"{e.id}.msg"]
    (loaded,) = list(spool.entries())
    assert loaded.attempts == 2 and loaded.next_attempt == 5000.0
    again = spool.claim(e.id)
    assert again is not None and again.entry.attempts == 2
    assert again.content() == b"Subject: x\r\n\r\nbody\r\n"  # read from the .msg, after the state line
    again.finish()
    assert queued_files(tmp_path) == []


def test_finish_removes_a_state_file_written_by_the_same_claim(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (claim,) = spool.put_batch([(entry(), b"x\r\n")])
    assert isinstance(claim, Claim)
    claim.entry.attempts = 1
    claim.save()  # a deferral, then a delivery on the same claim
    claim.finish()
    assert queued_files(tmp_path) == []


def test_put_batch_stores_all_and_hands_out_held_claims_with_their_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entries = [entry() for _ in range(5)]
    claims = spool.put_batch([(e, f"message {n}\r\n".encode()) for n, e in enumerate(entries)])
    assert all(isinstance(c, Claim) for c in claims)
    assert spool.ids() == sorted(e.id for e in entries)
    for n, claim in enumerate(claims):
        assert isinstance(claim, Claim) and claim.has_content and claim.content() == f"message {n}\r\n".encode()
        assert spool.claim(claim.entry.id) is None  # born claimed: no other worker takes it
        claim.release()
    assert all(spool.claim(e.id) is not None for e in entries)


def test_a_failed_write_leaves_nothing_and_the_others_are_stored(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    good, bad = entry(), entry()
    real_fsync = os.fsync
    calls = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the second message's file
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    first, second = spool.put_batch([(good, b"a\r\n"), (bad, b"b\r\n")])
    assert isinstance(first, Claim) and isinstance(second, OSError)
    first.release()
    assert [p.name for p in tmp_path.iterdir()] == [f"{good.id}.msg"]


def test_a_message_a_crash_cut_short_is_set_aside_never_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    cut, damaged, whole = entry(), entry(), entry()
    content = b"Subject: x\r\n\r\n" + b"line\r\n" * 100
    for e in (cut, damaged, whole):
        spool.put(e, content)
    # Written under its final name: a crash can leave it shorter than its seal says, or whole
    # in length with blocks never written (zeros), as some filesystems do.
    path = spool.message_path(cut.id)
    path.write_bytes(path.read_bytes()[:-40])
    path = spool.message_path(damaged.id)
    data = path.read_bytes()
    path.write_bytes(data[:-40] + b"\0" * 40)
    assert [e.id for e in spool.entries()] == sorted([damaged.id, whole.id])  # same length: seen at claim
    assert spool.claim(damaged.id) is None
    claim = spool.claim(whole.id)
    assert claim is not None and claim.content() == content
    claim.release()
    assert spool.ids() == [whole.id]
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == sorted([f"{cut.id}.msg", f"{damaged.id}.msg"])


def test_a_claim_without_reading_checks_the_seal_when_the_content_is_read(tmp_path: Path) -> None:
    from scattergate.delivery.spool import Incomplete

    spool = Spool(tmp_path)
    damaged, whole = entry(), entry()
    for e in (damaged, whole):
        spool.put(e, b"Subject: x\r\n\r\nbody\r\n")
    path = spool.message_path(damaged.id)
    data = path.read_bytes()
    path.write_bytes(data[:-6] + b"\0" * 6)  # same length: only the CRC tells
    claim = spool.claim(damaged.id, read=False)
    assert claim is not None and not claim.has_content
    with pytest.raises(Incomplete):
        claim.content()
    claim.release()
    good = spool.claim(whole.id, read=False)
    assert good is not None and good.content() == b"Subject: x\r\n\r\nbody\r\n"


def test_an_empty_or_headless_file_is_left_alone_while_its_writer_holds_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    in_progress = spool.message_path(e.id)
    in_progress.write_bytes(b'{"sender":"a@exa')  # the first line not even complete yet
    holder = os.open(in_progress, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert list(spool.entries()) == [] and spool.claim(e.id) is None
        assert in_progress.exists()
    finally:
        os.close(holder)
    assert list(spool.entries()) == []  # the writer is gone: a crash leftover, set aside
    assert not in_progress.exists() and (tmp_path / "corrupt" / in_progress.name).exists()


@pytest.fixture
def before_the_next_flock(monkeypatch):  # type: ignore[no-untyped-def]
    """before_the_next_flock(action): the spool's next flock runs `action` first (what another
    worker does in that moment), then locks as usual; later flocks are untouched."""
    import scattergate.delivery.spool as spool_module

    real_flock = fcntl.flock

    def arrange(action: Callable[[], object]) -> None:
        def flock(fd: int, op: int) -> None:
            monkeypatch.setattr(spool_module.fcntl, "flock", real_flock)
            action()
            real_flock(fd, op)

        monkeypatch.setattr(spool_module.fcntl, "flock", flock)

    return arrange


def test_another_worker_never_sees_a_message_before_its_writer_holds_it(tmp_path: Path, before_the_next_flock) -> None:  # type: ignore[no-untyped-def]
    """Between create and flock (a thread may wait for the GIL there for milliseconds) a scan
    of another worker must not find the file: it would take it for a crash's leftover."""
    spool = Spool(tmp_path)
    e = entry()
    seen: list[object] = []
    other = Spool(tmp_path)
    before_the_next_flock(lambda: seen.extend([list(other.entries()), other.claim(e.id)]))
    (result,) = spool.put_batch([(e, b"x\r\n")])
    assert seen == [[], None]
    assert isinstance(result, Claim)
    result.release()
    assert spool.ids() == [e.id] and not (tmp_path / "corrupt").exists()


def test_a_worker_starting_in_that_window_costs_the_writer_a_failure_never_a_loss(tmp_path: Path, before_the_next_flock) -> None:  # type: ignore[no-untyped-def]
    """Start-up recovery removes unlocked temporary files (a crash's leftovers); one it catches
    before its writer locked it makes that write fail (451 to the client), never a 250 for a
    message that is not there."""
    spool = Spool(tmp_path)
    e = entry()
    recovered: list[int] = []
    before_the_next_flock(lambda: recovered.append(Spool(tmp_path).recover()))
    (result,) = spool.put_batch([(e, b"x\r\n")])
    assert recovered == [1]
    assert isinstance(result, OSError)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_whose_file_lost_its_name_before_it_was_durable_reports_failure(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    e = entry()
    real_fsync = os.fsync

    def name_gone_first(fd: int) -> None:
        spool.message_path(e.id).unlink(missing_ok=True)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", name_gone_first)
    (result,) = spool.put_batch([(e, b"x\r\n")])
    assert isinstance(result, OSError) and "removed before it was durable" in str(result)
    assert list(tmp_path.iterdir()) == []


def test_a_message_of_the_earlier_unsealed_format_is_still_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry(attempts=2)
    # Written whole under a temporary name and renamed: no seal on its state line.
    spool.message_path(e.id).write_bytes(e.to_json() + b"\n" + b"Subject: old\r\n\r\nbody\r\n")
    assert [x.attempts for x in spool.entries()] == [2]
    claim = spool.claim(e.id)
    assert claim is not None and claim.content() == b"Subject: old\r\n\r\nbody\r\n"


def test_recover_leaves_alone_what_a_live_writer_holds(tmp_path: Path) -> None:
    """Regression: a worker starting (or reloading) while another one was writing removed the
    other's half-written message, and with the earlier layout even the content of a message
    about to be acknowledged."""
    spool = Spool(tmp_path)
    in_progress = tmp_path / ".abc123.msg.tmp"
    in_progress.write_bytes(b"{}\npartial")
    legacy_in_progress = tmp_path / "def456.eml"  # earlier layout: content renamed, state not yet
    legacy_in_progress.write_bytes(b"content")
    holders = [os.open(path, os.O_RDONLY) for path in (in_progress, legacy_in_progress)]
    try:
        for fd in holders:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert spool.recover() == 0
        assert in_progress.exists() and legacy_in_progress.exists()
    finally:
        for fd in holders:
            os.close(fd)
    assert spool.recover() == 2  # the writers are gone: never acknowledged
    assert list(tmp_path.iterdir()) == []


def test_recover_removes_a_state_left_without_its_message(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry()
    (tmp_path / f"{e.id}.json").write_bytes(e.to_json())  # a removal cut short after the .msg
    assert spool.recover() == 1 and list(tmp_path.iterdir()) == []


def test_a_message_finished_while_we_waited_for_its_lock_is_not_claimed(tmp_path: Path, before_the_next_flock) -> None:  # type: ignore[no-untyped-def]
    """The .msg is opened, another worker delivers and removes it, then we get the lock: the
    state line is still readable through our descriptor, but the message is gone."""
    spool = Spool(tmp_path)
    e = entry()
    spool.put(e, b"x\r\n")
    holder = spool.claim(e.id)
    assert holder is not None
    before_the_next_flock(holder.finish)
    assert spool.claim(e.id) is None


def test_the_earlier_two_file_layout_is_converted_at_start_up(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    e = entry(attempts=1)
    (tmp_path / f"{e.id}.eml").write_bytes(b"Subject: old\r\n\r\nbody\r\n")
    (tmp_path / f"{e.id}.json").write_bytes(e.to_json())
    assert spool.recover() == 0
    assert spool.ids() == [e.id] and not (tmp_path / f"{e.id}.eml").exists()
    claim = spool.claim(e.id)
    assert claim is not None and claim.entry == e
    assert claim.content() == b"Subject: old\r\n\r\nbody\r\n"


def test_writer_commits_concurrent_arrivals_together_and_hands_them_over() -> None:
    async def scenario(root: Path) -> tuple[int, list[Claim], list[str]]:
        spool = Spool(root)
        batches = []
        real = spool.put_batch

        def counting(items):  # type: ignore[no-untyped-def]
            batches.append(len(items))
            return real(items)

        spool.put_batch = counting  # type: ignore[method-assign]
        handed: list[Claim] = []
        writer = SpoolWriter(spool, handed.append)
        entries = [entry() for _ in range(10)]
        await asyncio.gather(*(writer.put(e, b"x\r\n") for e in entries))
        cancelled = asyncio.create_task(writer.put(entry(), b"never\r\n"))
        await asyncio.sleep(0)  # queued ...
        cancelled.cancel()  # ... and given up before its batch started: nothing is written
        await asyncio.gather(cancelled, return_exceptions=True)
        await writer.close()
        ids = spool.ids()
        for claim in handed:
            await writer.remove(claim)
        assert spool.ids() == []
        return len(batches), handed, ids

    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        count, handed, ids = asyncio.run(scenario(Path(directory)))
    assert count < 10  # committed together, not a trip each
    assert len(handed) == 10 and all(c.has_content for c in handed) and len(ids) == 10


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


# -- SpoolWriter trips: one group-commit trip to the thread at a time, removals riding along ---------------------


class GatedSpool(Spool):
    """A spool whose `put_batch` holds, in the writer's thread, any batch with a gated message
    until its gate opens; it tells the loop when such a batch has reached the thread."""

    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(root)
        self.loop = loop
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, asyncio.Future[None]] = {}
        self.batches: list[list[str]] = []  # the ids of each batch written, in order

    def gate(self, e: SpoolEntry) -> threading.Event:
        self.gates[e.id] = threading.Event()
        self.entered[e.id] = self.loop.create_future()
        return self.gates[e.id]

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.set()

    def _arrived(self, message_id: str) -> None:
        if not self.entered[message_id].done():  # a test that gave up waiting cancelled it
            self.entered[message_id].set_result(None)

    def put_batch(self, items: Sequence[tuple[SpoolEntry, bytes]]) -> list[Claim | BaseException]:
        ids = [e.id for e, _ in items]
        for message_id in ids:
            if message_id in self.gates:
                self.loop.call_soon_threadsafe(self._arrived, message_id)
                if not self.gates[message_id].wait(30):  # hang guard
                    raise TimeoutError(f"gate of {message_id} never opened")
        results = super().put_batch(items)
        self.batches.append(ids)
        return results


@contextlib.asynccontextmanager
async def gated_writer(root: Path, **options: Any) -> AsyncIterator[tuple[GatedSpool, SpoolWriter, list[Claim]]]:
    loop = asyncio.get_running_loop()
    spool = GatedSpool(root, loop)
    handed: list[Claim] = []
    writer = SpoolWriter(spool, handed.append, **options)
    try:
        yield spool, writer, handed
    finally:
        spool.open_all()  # a failed test must not leave a thread blocked
        await asyncio.wait_for(writer.close(), 10)
        for claim in handed:
            claim.release()


async def settle() -> None:
    """Let ready tasks take their next steps (a put, and any trip it starts): scheduling, not time."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_writer_a_put_during_a_trip_waits_for_it_and_goes_on_the_next(tmp_path: Path) -> None:
    # One trip at a time: measured against three in flight, it costs less CPU per message and
    # is as fast (docs/spool.md); the messages that arrive meanwhile form the next batch.
    async with gated_writer(tmp_path) as (spool, writer, handed):
        first, second = entry(), entry()
        spool.gate(first)
        put_first = asyncio.create_task(writer.put(first, b"x\r\n"))
        await asyncio.wait_for(spool.entered[first.id], 10)
        put_second = asyncio.create_task(writer.put(second, b"x\r\n"))
        await settle()
        assert writer.trips == 1 and not put_second.done()  # no second trip

        spool.gates[first.id].set()
        await asyncio.wait_for(asyncio.gather(put_first, put_second), 10)
        # The second message went on the next trip, after the first.
        assert spool.batches == [[first.id], [second.id]]
        assert [c.entry.id for c in handed] == [first.id, second.id]


async def test_writer_close_waits_for_the_trip_in_flight_and_the_next(tmp_path: Path) -> None:
    async with gated_writer(tmp_path) as (spool, writer, handed):
        first, second = entry(), entry()
        spool.gate(first)
        put_first = asyncio.create_task(writer.put(first, b"x\r\n"))
        await asyncio.wait_for(spool.entered[first.id], 10)
        put_second = asyncio.create_task(writer.put(second, b"x\r\n"))  # waits for the next trip
        closing = asyncio.create_task(writer.close())
        await settle()
        assert not closing.done()

        spool.gates[first.id].set()
        await asyncio.wait_for(closing, 10)
        assert put_first.done() and put_second.done()
        assert spool.ids() == sorted([first.id, second.id]) and len(handed) == 2


async def test_writer_removes_at_once_when_no_trip_is_out_else_on_the_next(tmp_path: Path) -> None:
    async with gated_writer(tmp_path) as (spool, writer, handed):
        first, second, blocked = entry(), entry(), entry()
        await asyncio.wait_for(asyncio.gather(writer.put(first, b"x\r\n"), writer.put(second, b"x\r\n")), 10)
        one, two = handed
        await asyncio.wait_for(writer.remove(one), 10)  # no trip out: no waiting for company
        assert first.id not in spool.ids() and one._fd == -1

        spool.gate(blocked)
        put_blocked = asyncio.create_task(writer.put(blocked, b"x\r\n"))
        await asyncio.wait_for(spool.entered[blocked.id], 10)
        removal = asyncio.create_task(writer.remove(two))  # a trip is out: it goes on the next
        await settle()
        assert not removal.done() and second.id in spool.ids()
        spool.gates[blocked.id].set()
        await asyncio.wait_for(asyncio.gather(put_blocked, removal), 10)
        assert spool.ids() == [blocked.id] and two._fd == -1


async def test_writer_a_message_given_up_before_its_trip_leaves_nothing(tmp_path: Path) -> None:
    async with gated_writer(tmp_path) as (spool, writer, handed):
        first, abandoned = entry(), entry()
        spool.gate(first)
        put_first = asyncio.create_task(writer.put(first, b"x\r\n"))
        await asyncio.wait_for(spool.entered[first.id], 10)
        put_abandoned = asyncio.create_task(writer.put(abandoned, b"x\r\n"))
        await settle()
        put_abandoned.cancel()
        spool.gates[first.id].set()
        await asyncio.wait_for(put_first, 10)
        await asyncio.wait_for(writer.close(), 10)
        assert spool.ids() == [first.id] and [c.entry.id for c in handed] == [first.id]


async def test_writer_removals_asked_during_a_removal_trip_go_together_on_the_next(tmp_path: Path) -> None:
    async with gated_writer(tmp_path) as (spool, writer, handed):
        entries = [entry() for _ in range(4)]
        await asyncio.wait_for(asyncio.gather(*(writer.put(e, b"x\r\n") for e in entries)), 10)
        trips = writer.trips
        first = asyncio.create_task(writer.remove(handed[0]))
        await settle()  # the first removal's trip is out ...
        rest = [asyncio.create_task(writer.remove(claim)) for claim in handed[1:]]  # ... these wait for it
        await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        await writer.close()
        assert spool.ids() == [] and all(claim._fd == -1 for claim in handed)
        assert writer.trips - trips <= 2  # not a trip each


# Files kept for reuse (SpareFiles): no inode is allocated or freed per message.


def test_a_delivered_message_file_is_rewritten_for_the_next_message_not_created_anew(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = entry(), entry()
    (claim,) = spool.put_batch([(first, b"first message, longer than the next\r\n")])
    assert isinstance(claim, Claim)
    inode = os.stat(spool.message_path(first.id)).st_ino
    claim.finish()
    assert spool.ids() == [] and spool.claim(first.id) is None
    spool.put(second, b"second\r\n")
    assert os.stat(spool.message_path(second.id)).st_ino == inode
    again = spool.claim(second.id)
    assert again is not None and again.entry == second and again.content() == b"second\r\n"


def test_a_rewrite_a_crash_cut_short_never_brings_the_delivered_message_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    delivered, fresh = entry(), entry()
    (claim,) = spool.put_batch([(delivered, b"Subject: delivered\r\n\r\nbody\r\n")])
    assert isinstance(claim, Claim)
    old = spool.message_path(delivered.id).read_bytes()
    claim.finish()
    # The kept file renamed to the new message's name, its old (whole, sealed) content still on
    # disk: what a crash between the rename and the fsync of the rewrite can leave.
    spool.message_path(fresh.id).write_bytes(old)
    assert spool.claim(fresh.id) is None
    assert spool.ids() == []
    assert [p.name for p in (tmp_path / "corrupt").iterdir()] == [f"{fresh.id}.msg"]


def test_spares_are_bounded_and_the_rest_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, spares=1)
    claims = spool.put_batch([(entry(), b"x\r\n"), (entry(), b"y\r\n")])
    for claim in claims:
        assert isinstance(claim, Claim)
        claim.finish()
    (own,) = (tmp_path / SPARE_DIR).iterdir()
    assert len(list(own.iterdir())) == 1 and spool.ids() == []


def test_a_gone_process_spares_are_taken_over_emptied_a_live_ones_left_alone(tmp_path: Path) -> None:
    spare = tmp_path / SPARE_DIR
    gone, live = spare / "1.gone", spare / "2.live"
    for directory in (gone, live):
        directory.mkdir(parents=True)
        (directory / "1").write_bytes(b"content a crash left")
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as its living owner holds it
    try:
        spool = Spool(tmp_path)
        (claim,) = spool.put_batch([(entry(), b"x\r\n")])
        assert isinstance(claim, Claim)
        claim.finish()
        assert not gone.exists() and (live / "1").read_bytes() == b"content a crash left"
        (own,) = [d for d in spare.iterdir() if d != live]
        kept = sorted(own.iterdir())
        assert len(kept) == 2 and all(p.stat().st_size == 0 for p in kept)
    finally:
        os.close(held)


def test_a_kept_file_is_emptied_delivered_mail_does_not_linger(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (claim,) = spool.put_batch([(entry(), b"Subject: private\r\n\r\nbody\r\n")])
    assert isinstance(claim, Claim)
    claim.finish()
    (own,) = (tmp_path / SPARE_DIR).iterdir()
    (kept,) = own.iterdir()
    assert kept.stat().st_size == 0


def test_the_stock_made_at_start_up_serves_new_messages_without_creating_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path, spares=8)
    assert spool.spares.stock() == 8 and spool.spares.stock() == 0
    (own,) = (tmp_path / SPARE_DIR).iterdir()
    stocked = {p.stat().st_ino for p in own.iterdir()}
    entries = [entry() for _ in range(5)]
    claims = spool.put_batch([(e, b"x\r\n") for e in entries])
    assert all(isinstance(c, Claim) for c in claims)
    assert {spool.message_path(e.id).stat().st_ino for e in entries} <= stocked
    assert len(list(own.iterdir())) == 3


def test_a_forked_worker_keeps_its_own_spares(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (claim,) = spool.put_batch([(entry(), b"x\r\n")])
    assert isinstance(claim, Claim)
    claim.finish()
    (parents,) = (tmp_path / SPARE_DIR).iterdir()
    pid = os.fork()
    if pid == 0:  # the child: must not take the parent's file, and keeps its own elsewhere
        try:
            fd, path = spool.spares.take()
            (child_claim,) = spool.put_batch([(entry(), b"y\r\n")])
            assert isinstance(child_claim, Claim)
            child_claim.finish()
            os._exit(0 if fd == -1 and path is None and len(list((tmp_path / SPARE_DIR).iterdir())) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(list(parents.iterdir())) == 1


def test_a_claim_that_opened_the_file_before_it_was_delivered_gets_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)
    e = entry()
    (first,) = spool.put_batch([(e, b"x\r\n")])
    assert isinstance(first, Claim)
    first.release()
    holder = spool.claim(e.id)
    assert holder is not None
    real_flock = fcntl.flock
    pending = [holder]

    def delivered_meanwhile(fd: int, operation: int) -> None:
        if pending:
            pending.pop().finish()  # kept for reuse: renamed, so its link count stays 1
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", delivered_meanwhile)
    assert spool.claim(e.id) is None
