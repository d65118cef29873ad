"""The durable spool of store-and-forward mode.

Each message is two files in one directory: `<id>.eml` (the content) and `<id>.json` (the
envelope and delivery state). Both are written to temporary names, fsynced and renamed, the
content first and the state last, and the directory is fsynced before we answer 250: a
message whose `.json` exists is complete; a lone `.eml` is an interrupted write (never
acknowledged) and is removed at start-up. A worker claims a message with an exclusive,
non-blocking flock on its `.eml` (which, unlike the state file, is never replaced while it
lives), so several worker processes can share one spool.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from scattergate.model import new_id

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(slots=True)
class SpooledRecipient:
    address: str
    notify: list[str] | None = None  # RFC 3461 NOTIFY; None = not given
    orcpt: str = ""
    state: str = PENDING
    reply: str = ""  # the last reply from the downstream for this recipient


@dataclass(slots=True)
class SpoolEntry:
    sender: str
    recipients: list[SpooledRecipient]
    arrival: float
    id: str = field(default_factory=new_id)
    client_ip: str = ""
    helo: str = ""
    ret: str = ""
    envid: str = ""
    mail_options: list[str] = field(default_factory=list)
    # What the safe-bounce rule needs, fixed at acceptance time.
    spf_result: str | None = None
    dkim_aligned: bool = False
    content_verdict: str = "clean"
    # Scheduling.
    attempts: int = 0
    next_attempt: float = 0.0
    delay_notified: bool = False
    # A DSN we generated: never answered with another DSN.
    is_dsn: bool = False

    def pending(self) -> list[SpooledRecipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SpoolEntry":
        raw = json.loads(data)
        raw["recipients"] = [SpooledRecipient(**r) for r in raw["recipients"]]
        return cls(**raw)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # disk full: leave nothing half-written behind
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Claim:
    """An exclusive hold on one spooled message while it is being delivered."""

    def __init__(self, spool: "Spool", entry: SpoolEntry, fd: int) -> None:
        self.spool, self.entry, self._fd = spool, entry, fd

    def content(self) -> bytes:
        return self.spool.content_path(self.entry.id).read_bytes()

    def save(self) -> None:
        _write_atomically(self.spool.meta_path(self.entry.id), self.entry.to_json())

    def finish(self) -> None:
        """Delivery is over for every recipient: remove the message (state last, like a commit)."""
        self.spool.content_path(self.entry.id).unlink(missing_ok=True)
        self.spool.meta_path(self.entry.id).unlink(missing_ok=True)
        _fsync_dir(self.spool.root)
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def content_path(self, message_id: str) -> Path:
        return self.root / f"{message_id}.eml"

    def meta_path(self, message_id: str) -> Path:
        return self.root / f"{message_id}.json"

    def put(self, entry: SpoolEntry, content: bytes) -> None:
        """Store durably; when this returns, the message survives a crash. Blocking."""
        _write_atomically(self.content_path(entry.id), content)
        try:
            _write_atomically(self.meta_path(entry.id), entry.to_json())
        except BaseException:
            self.content_path(entry.id).unlink(missing_ok=True)  # never acknowledged: gone
            raise
        _fsync_dir(self.root)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))

    def __len__(self) -> int:
        return len(self.ids())

    def recover(self) -> int:
        """Remove what interrupted writes left behind (never acknowledged); return how many."""
        removed = 0
        for path in self.root.iterdir():
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed += 1
            elif path.suffix == ".eml" and not self.meta_path(path.stem).exists():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def entries(self) -> Iterator[SpoolEntry]:
        for message_id in self.ids():
            try:
                yield SpoolEntry.from_json(self.meta_path(message_id).read_bytes())
            except FileNotFoundError:
                continue  # delivered meanwhile by another worker
            except (ValueError, TypeError, KeyError) as exc:
                log.error("spool entry %s is unreadable (%s); left in place for inspection", message_id, exc)

    def claim(self, message_id: str) -> Claim | None:
        """Lock a message for delivery; None when another worker holds it or it is gone."""
        try:
            fd = os.open(self.content_path(message_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Re-read under the lock: the holder before us may have changed or finished it.
            entry = SpoolEntry.from_json(self.meta_path(message_id).read_bytes())
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except (ValueError, TypeError, KeyError):
            os.close(fd)
            log.error("spool entry %s is unreadable; skipped", message_id)
            return None
        return Claim(self, entry, fd)
