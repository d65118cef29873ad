"""SQLite state store (WAL): the embedded default, shared by the worker processes of one host.

Writes come in batches from the decision recorder, so each flush is one transaction no matter
how many messages went by; readers (dashboard, CLI) never block the writers under WAL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from scattergate.state.store import (
    DecisionRecord,
    QuarantineItem,
    storable,
    storable_batch,
    storable_item,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL, session TEXT NOT NULL, client TEXT NOT NULL, helo TEXT NOT NULL,
    sender TEXT NOT NULL, recipients TEXT NOT NULL, phase TEXT NOT NULL,
    verdict TEXT NOT NULL, reply TEXT NOT NULL, findings TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (time);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY, time REAL NOT NULL, sender TEXT NOT NULL, recipients TEXT NOT NULL,
    reason TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_time ON quarantine (time);
CREATE TABLE IF NOT EXISTS sent (hash TEXT PRIMARY KEY, sender TEXT NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sent_time ON sent (time);
CREATE TABLE IF NOT EXISTS hits (key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hits_expires ON hits (expires);
"""

# One statement per key: a fresh window when the old one is over, else add to it. The SET
# expressions all see the row as it was, so `expires` is compared before it changes.
_HIT = """
INSERT INTO hits (key, count, expires) VALUES (:key, :amount, :expires)
ON CONFLICT(key) DO UPDATE SET
    count = CASE WHEN hits.expires <= :now THEN excluded.count ELSE hits.count + excluded.count END,
    expires = CASE WHEN hits.expires <= :now THEN excluded.expires ELSE hits.expires END
RETURNING count
"""
# Expired counters are deleted every this many hits (per process): the table stays as small
# as the number of clients active within one window.
_HIT_SWEEP_EVERY = 1000


class SqliteStore:
    def __init__(
        self, path: str | Path, *, keep_decisions: int = 100_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        # Wall clock, not monotonic: the windows are shared with the other worker processes.
        self._clock = clock
        self._hits = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keep = keep_decisions
        # One connection guarded by a lock: flushes run in a worker thread, reads in others.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def add(self, counters: dict[str, int], decisions: Sequence[DecisionRecord]) -> None:
        counters, decisions = storable_batch(counters, decisions)
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

    def quarantine_add(self, item: QuarantineItem) -> None:
        item = storable_item(item)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO quarantine (id, time, sender, recipients, reason, size, path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (item.id, item.time, item.sender, json.dumps(item.recipients), item.reason, item.size, item.path),
            )

    def quarantine_list(self, limit: int = 100, search: str = "") -> list[QuarantineItem]:
        pattern = f"%{search}%"
        with self._lock:
            rows = self._db.execute(
                "SELECT id, time, sender, recipients, reason, size, path FROM quarantine"
                " WHERE sender LIKE ? OR recipients LIKE ? OR reason LIKE ? OR id LIKE ?"
                " ORDER BY time DESC LIMIT ?",
                (pattern, pattern, pattern, pattern, limit),
            ).fetchall()
        return [QuarantineItem(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6]) for r in rows]

    def quarantine_get(self, item_id: str) -> QuarantineItem | None:
        with self._lock:
            r = self._db.execute(
                "SELECT id, time, sender, recipients, reason, size, path FROM quarantine WHERE id = ?", (item_id,)
            ).fetchone()
        return QuarantineItem(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6]) if r else None

    def quarantine_remove(self, item_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM quarantine WHERE id = ?", (item_id,))

    def sent_add(self, message_hash: str, sender: str, when: float, keep_seconds: float) -> None:
        """Remember one of our outbound messages; forget those older than the window."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO sent (hash, sender, time) VALUES (?, ?, ?)",
                             (message_hash, storable(sender), when))
            self._db.execute("DELETE FROM sent WHERE time < ?", (when - keep_seconds,))

    def sent_lookup(self, message_hash: str, since: float) -> str | None:
        """The sender of our message with this hash, if we sent it after `since`."""
        with self._lock:
            row = self._db.execute("SELECT sender FROM sent WHERE hash = ? AND time >= ?",
                                   (message_hash, since)).fetchone()
        return row[0] if row else None

    def hit(self, keys: Sequence[str], window: float, amount: int = 1) -> list[int]:
        """Windowed counters; every worker process on this host shares them through the file."""
        now = self._clock()
        params = [{"key": k, "amount": amount, "expires": now + window, "now": now} for k in keys]
        with self._lock:
            self._hits += 1
            sweep = self._hits % _HIT_SWEEP_EVERY == 0
            if len(params) == 1 and not sweep:  # one statement is its own transaction
                return [self._db.execute(_HIT, params[0]).fetchone()[0]]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(_HIT, p).fetchone()[0] for p in params]
                if sweep:
                    self._db.execute("DELETE FROM hits WHERE expires <= ?", (now,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return counts

    def close(self) -> None:
        with self._lock:
            self._db.close()
