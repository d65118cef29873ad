"""What only the SQLite store has for rate limits: windows on the host's clock (injected here,
so time moves without sleeping), expired counters swept, worker processes sharing the file."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from scattergate.state import sqlite as sqlite_module
from scattergate.state.sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_starts_at_its_first_hit_and_then_counting_restarts(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
    assert store.hit(["m:a"], 60) == [1]
    clock.now += 59.9
    assert store.hit(["m:a"], 60) == [2]  # still the first window: hits do not extend it
    clock.now += 0.1
    assert store.hit(["m:a"], 60) == [1]  # the window is over: a new one
    clock.now += 30
    assert store.hit(["m:a", "m:b"], 60) == [2, 1]
    store.close()


def test_expired_counters_are_swept(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sqlite_module, "_HIT_SWEEP_EVERY", 10)
    clock = Clock()
    store = SqliteStore(tmp_path / "state.sqlite3", clock=clock)
    for n in range(9):
        store.hit([f"c:{n}"], 60)
    clock.now += 61
    store.hit(["c:new"], 60)  # the 10th hit sweeps the nine expired ones
    rows = store._db.execute("SELECT key FROM hits").fetchall()
    assert rows == [("c:new",)]
    store.close()


def _count(path: str, n: int) -> None:
    store = SqliteStore(path)
    for _ in range(n):
        store.hit(["c:192.0.2.7"], 3600)
    store.close()


def test_worker_processes_share_the_counters(tmp_path: Path) -> None:
    path = str(tmp_path / "state.sqlite3")
    SqliteStore(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_count, args=(path, 50)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = SqliteStore(path)
    assert store.hit(["c:192.0.2.7"], 3600) == [151]
    store.close()
