"""Login sessions kept server-side: ended at logout, expired when idle, tied to the token."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from scattergate.web.auth import Sessions

TOKEN = "a-token-of-enough-length-123"


def test_a_session_is_valid_until_ended_and_only_its_hash_is_on_disk(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path / "s", TOKEN)
    session = sessions.create()
    assert sessions.valid(session) and not sessions.valid(session + "x") and not sessions.valid("")
    (stored,) = (tmp_path / "s").iterdir()
    assert session not in stored.name and session not in stored.read_text()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    # Another worker process sees the same sessions (same directory).
    assert Sessions(tmp_path / "s", TOKEN).valid(session)
    sessions.end(session)
    assert not sessions.valid(session)


def test_idle_sessions_expire_and_are_pruned(tmp_path: Path) -> None:
    sessions = Sessions(tmp_path, TOKEN, lifetime=3600)
    old = sessions.create()
    (path,) = tmp_path.iterdir()
    past = time.time() - 7200
    os.utime(path, (past, past))
    assert not sessions.valid(old)
    stale = sessions.create()
    (stale_path,) = tmp_path.iterdir()
    os.utime(stale_path, (past, past))
    fresh = sessions.create()  # a new login sweeps out the idle ones
    assert len(list(tmp_path.iterdir())) == 1 and sessions.valid(fresh) and not sessions.valid(stale)


def test_a_new_token_ends_the_sessions_of_the_old_one(tmp_path: Path) -> None:
    session = Sessions(tmp_path, TOKEN).create()
    assert not Sessions(tmp_path, TOKEN + "-rotated").valid(session)
