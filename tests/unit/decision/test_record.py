"""The decision recorder's flush: when it returns, what was recorded is in the store."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from scattergate.decision.record import DecisionRecorder
from scattergate.state.sqlite import SqliteStore


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
