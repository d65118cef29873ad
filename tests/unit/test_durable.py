"""durable.py: the one way a file that must survive a crash is written."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from scattergate import durable


def test_write_new_writes_fsyncs_and_refuses_to_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "m.eml"
    durable.write_new(target, b"content", mode=0o600)
    assert target.read_bytes() == b"content" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert synced  # the content reached the disk before we returned
    with pytest.raises(FileExistsError):
        durable.write_new(target, b"other")
    assert target.read_bytes() == b"content"


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        durable.write_new(tmp_path / "m.eml", b"content")
    with pytest.raises(OSError):
        durable.replace(tmp_path / "meta.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_replace_swaps_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    target.write_bytes(b"old")
    (tmp_path / ".meta.json.tmp").write_bytes(b"left by a crash")
    durable.replace(target, b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_fsync_dir(tmp_path: Path) -> None:
    durable.fsync_dir(tmp_path)  # a directory can be synced; a file is refused
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")
