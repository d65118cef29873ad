"""SQLite state store (WAL): the embedded default, shared by the worker processes of one host.

Writes come in batches from the decision recorder, so each flush is one transaction no matter
how many messages went by; readers (dashboard, CLI) never block the writers under WAL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from scattergate.state.store import DecisionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, session TEXT NOT NULL, client TEXT NOT NULL, helo TEXT NOT NULL,
    sender TEXT NOT NULL, recipients TEXT NOT NULL, phase TEXT NOT NULL,
    verdict TEXT NOT NULL, reply TEXT NOT NULL, findings TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
"""


class SqliteStore:
    def __init__(self, path: str | Path, *, keep_decisions: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep = keep_decisions
        # One connection guarded by a lock: flushes run in a worker thread, reads in others.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, counters: dict[str, int], decisions: Sequence[DecisionRecord]) -> None:
        if not counters and not decisions:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    counters.items(),
                )
                self._db.executemany(
                    "INSERT INTO decisions (time, session, client, helo, sender, recipients, phase,"
                    " verdict, reply, findings) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (d.time, d.session, d.client, d.helo, d.sender, json.dumps(d.recipients),
                         d.phase, d.verdict, d.reply, json.dumps(d.findings))
                        for d in decisions
                    ],
                )
                if decisions:
                    self._db.execute(
                        "DELETE FROM decisions WHERE id <= (SELECT MAX(id) FROM decisions) - ?",
                        (self._keep,),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT name, value FROM counters ORDER BY name"))

    def recent_decisions(self, limit: int = 50) -> list[DecisionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT time, session, client, helo, sender, recipients, phase, verdict, reply, findings"
                " FROM decisions ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            DecisionRecord(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8],
                           tuple(json.loads(r[9])))
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
