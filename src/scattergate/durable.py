"""Durable writes: the one way we put a file on disk that must survive a crash.

Mail we answered 250 for is on disk before the 250: its content written and fsynced, and the
directory that names it fsynced, so the name survives too. A write that fails (disk full)
leaves nothing half-written behind. Used by the spool, Maildir delivery, the quarantine and
the site secret.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in directory `path` (new, renamed, linked) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Create `path` (it must not exist) holding `data`, fsynced. On any failure the file is
    removed again. The caller fsyncs the directory (once for several files, if it likes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def replace(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically: readers see the old file or the new one, whole.
    Written and fsynced under a temporary name, then renamed over `path`."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)  # left by a crash in the middle of a previous replace
    write_new(temporary, data)
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
