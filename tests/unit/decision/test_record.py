"""The decision recorder's flush: when it returns, what was recorded is in the store."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import signal
import threading
from pathlib import Path

from scattergate.decision.record import DecisionRecorder, format_decision
from scattergate.model import Accept, Phase, Session
from scattergate.config import Config
from scattergate.logsetup import REOPEN_SIGNALS, JsonFormatter, setup_logging
from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import DecisionRecord


class SlowStore(SqliteStore):
    """A real SQLite store whose first write waits until the test lets it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing = threading.Event()
        self.go_on = threading.Event()
        self._first = True

    def add(self, counters, decisions):  # type: ignore[no-untyped-def]
        if self._first:
            self._first = False
            self.writing.set()
            assert self.go_on.wait(10)
        super().add(counters, decisions)


def test_stop_during_the_periodic_write_loses_nothing(tmp_path: Path) -> None:
    """A worker stops, then closes its store and exits: stop() must not return while the
    periodic flush's write is still running in its thread."""
    store = SlowStore(tmp_path / "state.db")

    async def scenario() -> None:
        recorder = DecisionRecorder(store, flush_interval=0.01)
        recorder.count("sessions")
        recorder.start()
        await asyncio.to_thread(store.writing.wait, 10)  # the periodic write is under way
        stopping = asyncio.create_task(recorder.stop())
        for _ in range(5):  # turns of the loop: enough for a stop that does not wait
            await asyncio.sleep(0)
        if stopping.done():
            store.close()  # what the worker does next (the old code got here)
        store.go_on.set()
        await stopping

    asyncio.run(scenario())
    assert SqliteStore(tmp_path / "state.db").counters().get("sessions") == 1


def test_a_flush_waits_for_the_write_already_on_its_way(tmp_path: Path) -> None:
    store = SlowStore(tmp_path / "state.db")

    async def scenario() -> dict[str, int]:
        recorder = DecisionRecorder(store)
        recorder.count("decisions.data.tempfail")
        periodic = asyncio.create_task(recorder.flush())  # as the recorder's own timer does
        await asyncio.to_thread(store.writing.wait, 10)
        # The count is on its way: a flush now has nothing of its own to write, and must still
        # not return before that write is in the store.
        second = asyncio.create_task(recorder.flush())
        try:
            for _ in range(5):  # turns of the loop, not time: enough for a flush with nothing to do
                await asyncio.sleep(0)
            assert not second.done()
        finally:
            store.go_on.set()
        await second
        counters = store.counters()
        await periodic
        return counters

    assert asyncio.run(scenario())["decisions.data.tempfail"] == 1


# -- the decision line: client text can forge no field and reach no terminal ------------------

FORGED_HELO = "x.test client=192.0.2.66 verdict=accept"
NOT_UTF8 = b"\xff".decode("utf-8", "surrogateescape")


def forged_record() -> DecisionRecord:
    return DecisionRecord(
        time=1.0, session="s1", client="203.0.113.9", helo=FORGED_HELO,
        sender=f"evil\x1b[2J{NOT_UTF8}@example.net", recipients=("a@example.org", "b c@example.org"),
        phase="rcpt", verdict="reject", reply='550 5.7.1 "no"', findings=("helo.invalid[x y]",),
    )


def test_decision_line_fields_cannot_be_forged_by_the_client() -> None:
    line = format_decision(forged_record())
    assert line.startswith("decision ")
    pairs = [word.split("=", 1) for word in shlex.split(line.removeprefix("decision "))]
    keys = [key for key, _ in pairs]
    assert keys == ["session", "client", "helo", "from", "to", "phase", "verdict", "reply", "findings"]
    values = dict(pairs)
    assert values["client"] == "203.0.113.9" and values["verdict"] == "reject"
    assert values["helo"] == FORGED_HELO
    assert values["to"] == "<a@example.org>,<b c@example.org>" and values["reply"] == '550 5.7.1 "no"'


def test_decision_line_carries_no_terminal_escape_or_undecodable_byte() -> None:
    line = format_decision(forged_record())
    assert "\x1b" not in line and NOT_UTF8 not in line
    assert '"<evil\\x1b[2J\\xff@example.net>"' in line
    line.encode("utf-8")  # writable as it is


def test_json_log_line_is_writable_and_escaped() -> None:
    record = logging.LogRecord("scattergate.decision", logging.INFO, __file__, 1, "%s",
                               (format_decision(forged_record()),), None)
    record.decision = forged_record()
    line = JsonFormatter().format(record)
    assert line.isascii() and "\x1b" not in line
    entry = json.loads(line)
    assert entry["decision"]["sender"] == "evil\x1b[2J\\xff@example.net"  # the store's escaping
    assert entry["decision"]["helo"] == FORGED_HELO
    assert entry["message"] == format_decision(forged_record())


def test_one_undecodable_decision_does_not_lose_the_batch(tmp_path: Path) -> None:
    """Through the recorder, as a front end records: the flush stores all three decisions."""
    store = SqliteStore(tmp_path / "state.db")
    verdict = Accept()

    async def scenario() -> None:
        recorder = DecisionRecorder(store)
        for n, helo in enumerate(["a.example", f"b{NOT_UTF8}.example", "c.example"]):
            recorder.record(Session(f"192.0.2.{n + 1}", helo=helo), Phase.DATA, "s@example.net",
                            ["r@example.org"], verdict)
        await recorder.flush()

    asyncio.run(scenario())
    assert sorted(d.helo for d in store.recent_decisions()) == ["a.example", "b\\xff.example", "c.example"]
    assert store.counters()["decisions.data.accept"] == 3


def test_a_log_line_with_undecodable_text_still_reaches_the_log_file(tmp_path: Path) -> None:
    """The decision line went missing from the file: a lone surrogate made the write fail."""
    config = Config()
    config.state.data_dir = str(tmp_path)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    signals = {signum: signal.getsignal(signum) for signum in REOPEN_SIGNALS}  # setup_logging sets them
    try:
        setup_logging(config)
        root.handlers[0].setLevel(logging.CRITICAL)  # keep stderr quiet; the file is the subject
        logging.getLogger("scattergate.test").info("helo=%s end", f"x{NOT_UTF8}")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for signum, handler in signals.items():
            signal.signal(signum, handler)
    text = (tmp_path / config.logging.file).read_text("utf-8")
    assert "helo=x\\udcff end" in text
