"""The durable spool of store-and-forward mode.

A message is one file, `<id>.msg`: a line of JSON (envelope, DSN parameters, what the
safe-bounce rule needs, delivery state) sealed with the content's length and a CRC-32, and
then the content. It is written under a temporary name, renamed, fsynced, and the directory
is fsynced, before we answer 250. The rename comes before the fsync so that one journal
commit covers it (renaming after the fsync cost a second commit per batch: a seventh of the
spool's throughput); a crash can therefore leave a `.msg` cut short, which its seal tells:
it was never acknowledged, and when found it is moved to `corrupt/`, never delivered. When
the delivery state changes (a deferral, a delay notice), it is written beside the message as
`<id>.json` (fsynced, renamed), which from then on supersedes the line in the `.msg`; the
content is never rewritten. A delivered message loses its `.msg` first and its `.json` last;
its `.msg` is kept (`SpareFiles`) and rewritten for a later message.

A worker claims a message with an exclusive, non-blocking flock on its `.msg`, so several
worker processes can share one spool. Messages that arrive together are written together
(`SpoolWriter`, a group commit): the files of a batch are written first and fsynced after, so
that one journal commit can cover several of them, and one directory fsync covers the new
names of the whole batch; each message is still acknowledged only once its own file and the
directory are durable. A message is born claimed (its writer takes the flock before the first
byte is written) and is handed to the scheduler with its content in memory, so nothing is read
back; start-up recovery leaves alone whatever a live process holds. A `.msg` gets its name
only once it is locked and written, so no scan of another worker finds it empty.

Spools of the earlier two-file layout (`<id>.eml` content + `<id>.json` state) are converted
at start-up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import logging
import os
import queue
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from scattergate import durable
from scattergate.model import new_id

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SPARE_DIR = "spare"  # SpareFiles


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
    # Put on hold by an administrator (`scattergate queue hold`): never delivered until released.
    held: bool = False

    def pending(self) -> list[SpooledRecipient]:
        return [r for r in self.recipients if r.state == PENDING]

    def to_json(self) -> bytes:
        """One line of JSON (json.dumps escapes every control character in strings)."""
        # What dataclasses.asdict gives, without its deep copies (this runs for every message).
        raw = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        raw["recipients"] = [{name: getattr(r, name) for name in _RECIPIENT_FIELDS} for r in self.recipients]
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SpoolEntry":
        raw = json.loads(data)
        raw["recipients"] = [SpooledRecipient(**r) for r in raw["recipients"]]
        return cls(**raw)


_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(SpoolEntry))
_RECIPIENT_FIELDS = tuple(f.name for f in dataclasses.fields(SpooledRecipient))


def _write_all(fd: int, parts: Sequence[bytes]) -> None:
    written = os.writev(fd, parts)
    rest = memoryview(b"".join(parts))[written:] if written < sum(map(len, parts)) else memoryview(b"")
    while rest:
        rest = rest[os.write(fd, rest):]


def _create(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


class Incomplete(ValueError):
    """A `.msg` whose write never finished (cut short, or blocks a crash left unwritten):
    it was never acknowledged, so it is set aside rather than delivered."""


def _sealed_line(state: bytes, content: bytes) -> bytes:
    """The first line of a `.msg`: the state, a TAB (json.dumps escapes every control
    character, so the JSON never holds one), the content's length and a CRC-32 of state and
    content. The seal is what tells a whole file from one a crash interrupted, since the file
    has its name before it is durable (renamed before its fsync: one journal commit, not two)."""
    return b"%s\t%d %08x\n" % (state, len(content), zlib.crc32(content, zlib.crc32(state)))


def _unseal(line: bytes) -> tuple[bytes, tuple[int, int] | None]:
    """(the state, (content length, CRC-32)) of a first line; no seal in files written whole
    under a temporary name and renamed (the earlier way): those are complete by construction."""
    state, tab, seal = line.partition(b"\t")
    if not tab:
        return state, None
    try:
        length, crc = seal.split(b" ")
        return state, (int(length), int(crc, 16))
    except ValueError:
        raise Incomplete("damaged seal") from None


def _read_header(fd: int) -> tuple[bytes, int]:
    """The first line of a `.msg` (without its LF), and the offset where the content starts."""
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            raise Incomplete("no complete first line")
        cut = chunk.find(b"\n")
        if cut >= 0:
            parts.append(chunk[:cut])
            return b"".join(parts), offset + cut + 1
        parts.append(chunk)
        offset += len(chunk)


def _read_from(fd: int, offset: int) -> bytes:
    size = os.fstat(fd).st_size
    parts = []
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _locked_by_someone(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (a writer or a delivery in progress)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def _start_writeback(fds: Sequence[int]) -> None:
    """Start writing every file of a batch out before the first fsync waits for one.

    With delayed allocation (ext4, XFS) a file's blocks are allocated when its writeback
    starts, and the allocation is metadata for the next journal commit: fsyncing the files one
    after the other then costs a commit each. Started together, one commit covers the batch
    (in isolation, 6 files: 1.06 -> 0.58 ms). On Linux, POSIX_FADV_DONTNEED starts the
    writeback without waiting (and drops the pages once clean: the content is kept in memory).
    Advice only: the fsyncs that follow are what make the files durable."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for fd in fds:
        try:
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            return


class SpareFiles:
    """Empty files kept to be written for new messages instead of files created anew.

    Why: creating a file allocates an inode, and on ext4 without a journal (the machines our
    numbers come from) the allocator skips, one buffer lookup each, every inode of the group
    freed in the last minutes: under a steady stream of messages that scan was an eighth of a
    worker's CPU, inside the writer's trip that clients wait for. A delivered message's file is
    renamed here and emptied; a new message is written into it and renamed into the spool. No
    inode is allocated or freed per message once the stock is made (`stock`, at start-up).

    Each process keeps its own in `spare/<pid>.<id>/`, a directory it holds an flock on, so no
    two processes ever take the same file; the files of a process that is gone (its directory's
    flock free) are taken over by the next one to start. A file is renamed here before it is
    emptied, so a crash in between can leave a delivered message's content under a spare name
    (emptied when taken over), never under a spool name: a crash while one is rewritten can
    leave its old content under the new name only if the rename reached the disk before the
    truncation, and `Spool._state` sets aside a `.msg` whose id is not its own.
    """

    def __init__(self, root: Path, keep: int) -> None:
        self.parent = root / SPARE_DIR
        self.keep = keep
        self._names: list[str] = []
        self._dir: Path | None = None
        self._pid = 0  # the process that made self._dir (a forked child makes its own)
        self._serial = 0

    def __len__(self) -> int:
        return len(self._names) if self._pid == os.getpid() else 0

    def _own_dir(self) -> Path:
        if self._dir is None or self._pid != os.getpid():
            self._names, self._pid = [], os.getpid()
            self.parent.mkdir(exist_ok=True)
            directory = self.parent / f"{self._pid}.{new_id()}"
            directory.mkdir()
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held (fd kept open) while we live
            self._dir = directory
            self._take_over_abandoned()
        return self._dir

    def _take_over_abandoned(self) -> None:
        """Move the files of processes that are gone into our own directory (emptied)."""
        assert self._dir is not None
        for directory in self.parent.iterdir():
            if directory == self._dir:
                continue
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for name in os.listdir(directory):
                    if len(self._names) < self.keep and self._adopt(directory / name):
                        continue
                    (directory / name).unlink(missing_ok=True)
                directory.rmdir()
            except OSError:
                pass  # a live process's (BlockingIOError), or taken meanwhile
            finally:
                os.close(fd)

    def _adopt(self, path: Path) -> bool:
        assert self._dir is not None
        self._serial += 1
        kept = self._dir / str(self._serial)
        try:
            os.rename(path, kept)
            os.truncate(kept, 0)  # a crash may have left one with its content
        except OSError:
            return False
        self._names.append(kept.name)
        return True

    def stock(self) -> int:
        """Fill our stock up to `keep` empty files (at start-up, before the load); how many
        were made."""
        if not self.keep:
            return 0
        directory = self._own_dir()
        made = 0
        while len(self._names) < self.keep:
            self._serial += 1
            os.close(_create(directory / str(self._serial)))
            self._names.append(str(self._serial))
            made += 1
        return made

    def put(self, path: Path) -> bool:
        """Keep the file at `path` (then no longer named there), emptied; False when enough
        are kept."""
        if len(self) >= self.keep:
            return False
        try:
            directory = self._own_dir()
            self._serial += 1
            kept = directory / str(self._serial)
            os.rename(path, kept)
        except OSError:
            return False
        try:
            os.truncate(kept, 0)  # delivered mail does not linger on disk
        except OSError:
            kept.unlink(missing_ok=True)
            return True
        self._names.append(kept.name)
        return True

    def take(self) -> tuple[int, Path | None]:
        """A kept file, open for writing and locked, and where it is; (-1, None) if none."""
        while len(self) and self._dir is not None:
            try:
                path = self._dir / self._names.pop()
            except IndexError:  # taken meanwhile by another thread
                break
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                # Whoever opened it under its old name before it was kept lets go of the lock as
                # soon as it has it (the name is gone): no one ever reads it once it is here.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                path.unlink(missing_ok=True)
                continue
            return fd, path
        return -1, None


def _still_named(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd` (not removed or set aside meanwhile)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class Claim:
    """An exclusive hold on one spooled message while it is being delivered."""

    def __init__(self, spool: "Spool", entry: SpoolEntry, fd: int, *, content: bytes | None = None,
                 offset: int = 0, seal: tuple[bytes, int] | None = None, state_file: bool = False) -> None:
        self.spool, self.entry, self._fd = spool, entry, fd
        # Whether a .json state file exists (only the claim's holder writes one): most messages
        # never have one, and their removal skips it.
        self._state_file = state_file
        self._content = content  # known when the claim comes from the writer: not read back
        self._offset = offset  # where the content starts in the .msg
        self._seal = seal  # (the .msg's state line, its CRC-32 with the content) to check on reading
        self._lock = threading.Lock()

    @property
    def has_content(self) -> bool:
        return self._content is not None

    def content(self) -> bytes:
        """The message, read on first use; raises Incomplete if it does not match its seal."""
        if self._content is None:
            content = _read_from(self._fd, self._offset)
            if self._seal is not None:
                state, crc = self._seal
                if zlib.crc32(content, zlib.crc32(state)) != crc:
                    raise Incomplete("CRC mismatch")
            self._content = content
        return self._content

    def save(self) -> None:
        """Write the changed delivery state (it supersedes the line in the .msg)."""
        durable.replace(self.spool.meta_path(self.entry.id), self.entry.to_json())
        self._state_file = True

    def finish(self) -> None:
        """Delivery is over for every recipient: remove the message (state last, like a commit).

        The directory is not fsynced: a crash before the removal reaches the disk can only
        deliver the message again (at least once), never lose it. A state file left without its
        message is removed at start-up."""
        path = self.spool.message_path(self.entry.id)
        if not self.spool.spares.put(path):
            path.unlink(missing_ok=True)
        if self._state_file:
            self.spool.meta_path(self.entry.id).unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        """Drop the claim (idempotent; the loop and the writer's thread may both call it)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # closing drops the flock


class Spool:
    def __init__(self, root: Path, *, spares: int = 512) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.spares = SpareFiles(root, spares)
        self._root_fd = -1  # kept open for the directory fsync of every batch

    def _sync_names(self) -> None:
        """fsync the spool directory: the new names of a batch (ext4 without a journal does not
        have them otherwise). Its descriptor stays open, two system calls fewer per batch."""
        if self._root_fd < 0:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.fsync(self._root_fd)

    def message_path(self, message_id: str) -> Path:
        return self.root / f"{message_id}.msg"

    def meta_path(self, message_id: str) -> Path:
        return self.root / f"{message_id}.json"

    def _temporary(self, message_id: str, suffix: str) -> Path:
        return self.root / f".{message_id}.{suffix}.tmp"

    def put(self, entry: SpoolEntry, content: bytes) -> None:
        """Store durably; when this returns, the message survives a crash. Blocking."""
        (result,) = self.put_batch([(entry, content)])
        if isinstance(result, BaseException):
            raise result
        result.release()

    def put_batch(self, items: Sequence[tuple[SpoolEntry, bytes]]) -> list["Claim | BaseException"]:
        """Store several messages durably, with one directory fsync for all. Blocking.

        Returns, per message, either a Claim (stored; the caller owns the claim and must
        release it) or the exception that kept it from being stored (nothing of it is left).
        """
        results: list[Claim | BaseException] = []
        written: list[int] = []  # indexes of the claims in `results`
        for entry, content in items:
            fd, temporary = -1, self._temporary(entry.id, "msg")
            try:
                # Born claimed, under a name no scan looks at: by the time it has its real name
                # it is locked and written (if not yet durable), so no other worker ever finds
                # it empty. Renamed before the fsync, so one journal commit covers the create,
                # the rename and the data (a rename after it cost a second commit per batch).
                fd, spare = self.spares.take()
                if spare is not None:
                    temporary = spare
                else:
                    fd = _create(temporary)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                state = entry.to_json()
                header = _sealed_line(state, content)
                _write_all(fd, (header, content))
                os.rename(temporary, self.message_path(entry.id))
            except BaseException as exc:
                self._discard(entry.id, fd, temporary)
                results.append(exc)
                continue
            written.append(len(results))
            results.append(Claim(self, entry, fd, content=content, offset=len(header)))
        # fsync once every file of the batch is written: one journal commit can cover several.
        if len(written) > 1:
            _start_writeback([results[index]._fd for index in written])  # type: ignore[union-attr]
        for index in list(written):
            claim = results[index]
            assert isinstance(claim, Claim)
            try:
                os.fsync(claim._fd)
                # Defence in depth: the name we are about to acknowledge is the file we wrote.
                if not _still_named(claim._fd, self.message_path(claim.entry.id)):
                    raise OSError(f"spool file of {claim.entry.id} removed before it was durable")
            except BaseException as exc:
                self._discard(claim.entry.id, claim._fd)
                claim._fd = -1
                results[index] = exc
                written.remove(index)
        if written:
            try:
                self._sync_names()
            except BaseException as exc:
                for index in written:  # not acknowledged: must not be delivered either
                    claim = results[index]
                    assert isinstance(claim, Claim)
                    self._discard(claim.entry.id, claim._fd)
                    claim._fd = -1
                    results[index] = exc
        return results

    def _discard(self, message_id: str, fd: int, temporary: Path | None = None) -> None:
        """Remove every trace of a message that was not stored (disk full, I/O error)."""
        for path in (self.message_path(message_id), temporary or self._temporary(message_id, "msg")):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
        if fd >= 0:
            os.close(fd)

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.msg"))

    def __len__(self) -> int:
        return len(self.ids())

    def recover(self) -> int:
        """Remove what interrupted writes left behind (never acknowledged); return how many.

        Other workers may be writing or delivering while this runs (a worker starting late, a
        reload): whatever a live process holds the flock on is theirs and is left alone.
        """
        removed = 0
        for path in sorted(self.root.iterdir()):
            name, stem = path.name, path.stem
            if name.startswith(".") and name.endswith(".tmp"):
                message_id = name[1:].split(".", 1)[0]
                # A writer holds the lock on its message (temporary or renamed); a delivery
                # rewriting the state holds it on the message.
                if any(_locked_by_someone(p) for p in (self._temporary(message_id, "msg"),
                                                       self.message_path(message_id),
                                                       self.root / f"{message_id}.eml")):
                    continue
            elif path.suffix == ".json":
                # State without its message: a removal cut short (the message goes first).
                if self.message_path(stem).exists() or (self.root / f"{stem}.eml").exists():
                    continue
            elif path.suffix == ".eml":  # the earlier two-file layout
                if self.meta_path(stem).exists():
                    self._convert(stem)
                    continue
                if _locked_by_someone(path):
                    continue
            else:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def _convert(self, message_id: str) -> None:
        """`<id>.eml` + `<id>.json` (the earlier layout) → `<id>.msg`; the `.json` stays valid."""
        legacy = self.root / f"{message_id}.eml"
        try:
            fd = os.open(legacy, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            entry = SpoolEntry.from_json(self.meta_path(message_id).read_bytes())
            (result,) = self.put_batch([(entry, _read_from(fd, 0))])
            if isinstance(result, BaseException):
                raise result
            result.release()
            legacy.unlink()
            log.info("spool: converted %s to the one-file layout", message_id)
        except BlockingIOError:
            pass  # an older worker is delivering it
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("spool: cannot convert %s (%s); left in place", message_id, exc)
        finally:
            os.close(fd)

    def _state(self, message_id: str, fd: int) -> tuple[SpoolEntry, int, tuple[bytes, int] | None, bool]:
        """The current state (the .json if there is one, else the .msg's line), the content's
        offset in the .msg, what to check the content against (None for an unsealed file) and
        whether there is a .json. Raises Incomplete for a file cut short."""
        line, offset = _read_header(fd)
        state, seal = _unseal(line)
        check = None
        if seal is not None:
            length, crc = seal
            if os.fstat(fd).st_size != offset + length:
                raise Incomplete("content cut short")
            check = (state, crc)
        entry = SpoolEntry.from_json(state)
        if entry.id != message_id:
            # A spare file (SpareFiles) whose rewrite a crash cut short, still holding the
            # delivered message it had: never acknowledged under this name, never delivered.
            raise Incomplete(f"still holds {entry.id}, delivered earlier: its rewrite was cut short")
        try:
            entry, state_file = SpoolEntry.from_json(self.meta_path(message_id).read_bytes()), True
        except FileNotFoundError:
            state_file = False
        return entry, offset, check, state_file

    def set_aside(self, message_id: str, why: Incomplete) -> None:
        """Move a `.msg` found incomplete out of the queue, into `corrupt/` (as Postfix does
        with damaged queue files). The caller holds its flock, so no writer is on it."""
        corrupt = self.root / "corrupt"
        corrupt.mkdir(exist_ok=True)
        for path in (self.message_path(message_id), self.meta_path(message_id)):
            try:
                path.rename(corrupt / path.name)
            except FileNotFoundError:
                pass
        log.warning("spool: %s was never completely written (%s: a crash during its write, so it was "
                    "never acknowledged); moved to %s", message_id, why, corrupt)

    def entries(self) -> Iterator[SpoolEntry]:
        for message_id in self.ids():
            try:
                fd = os.open(self.message_path(message_id), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # delivered meanwhile by another worker
            try:
                yield self._state(message_id, fd)[0]
            except Incomplete:
                # Being written right now (its writer holds the lock), or left by a crash:
                # claiming it tells which, and sets the latter aside.
                claim = self.claim(message_id)
                if claim is not None:
                    claim.release()
            except (ValueError, TypeError, KeyError) as exc:
                log.error("spool entry %s is unreadable (%s); left in place for inspection", message_id, exc)
            finally:
                os.close(fd)

    def claim(self, message_id: str, *, read: bool = True) -> Claim | None:
        """Lock a message for delivery; None when another worker holds it or it is gone.

        With `read`, the content is read and checked against its seal now. The scheduler claims
        on the event loop and passes read=False: `Claim.content()` then reads and checks it in a
        thread, where a large message does not stall the loop. (A fresh message's writer hands
        its claim over with the content: it is never read back.)"""
        try:
            fd = os.open(self.message_path(message_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Read under the lock: the holder before us may have changed or finished it.
            if not _still_named(fd, self.message_path(message_id)):
                raise FileNotFoundError(message_id)  # finished between our open and our lock
            entry, offset, seal, state_file = self._state(message_id, fd)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except Incomplete as why:
            self.set_aside(message_id, why)
            os.close(fd)
            return None
        except (ValueError, TypeError, KeyError):
            os.close(fd)
            log.error("spool entry %s is unreadable; skipped", message_id)
            return None
        claim = Claim(self, entry, fd, offset=offset, seal=seal, state_file=state_file)
        if read:
            try:
                claim.content()
            except Incomplete as why:
                self.set_aside(message_id, why)
                claim.release()
                return None
        return claim


@dataclass(slots=True)
class _Trip:
    writes: list[tuple[SpoolEntry, bytes]]
    removals: list[Claim]
    future: "asyncio.Future[tuple[list[Claim | BaseException], list[BaseException | None]]]"
    loop: asyncio.AbstractEventLoop


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled (the trip itself still happened)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SpoolWriter:
    """Group commit for the event loop: `put` returns once the message is durable.

    Messages are written and fsynced in a thread, one trip at a time: the messages that arrive
    while a trip is out form the next batch, so under load each directory fsync, and often
    each journal commit, serves many messages, while a lone message is written at once. Each
    stored message's claim goes to `on_stored` (the scheduler), with its content in memory,
    whether or not its waiter is still there. Delivered messages are removed by the same trips:
    the removals asked for while a trip is out go on the next; when no trip is out, one starts
    at once (a trip to a thread, with the wake-ups it costs, is dearer than the file operations
    it carries, so the fewer the better).

    Nothing of it runs on the loop, not even the create, write and rename that take only
    microseconds alone: beside the fsyncs of the thread they wait on the filesystem, and the
    loop with them (measured: 495 against 606 messages a second accepted with them on the loop,
    docs/spool.md; on an ext4 without a journal, so it was not a journal they waited for).
    """

    def __init__(self, spool: Spool, on_stored: Callable[[Claim], None], *, max_batch: int = 64) -> None:
        self.spool = spool
        self.on_stored = on_stored
        self.max_batch = max_batch
        self._writes: list[tuple[SpoolEntry, bytes, asyncio.Future[None]]] = []
        self._removals: list[tuple[Claim, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        # The writer's own thread, fed trips through a queue (see _trip).
        self._trips: queue.SimpleQueue[_Trip | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0
        self.trips = 0  # handed to the thread so far (counted on the loop, for tests)

    async def put(self, entry: SpoolEntry, content: bytes) -> None:
        """Store durably (raises OSError when it could not). If the caller is cancelled
        before its batch starts, nothing is written."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((entry, content, future))
        self._kick()
        await future

    async def remove(self, claim: Claim) -> None:
        """Delivery is over: remove the message and release its claim (`Claim.finish`; on an
        error, e.g. EIO, the claim is released and the message stays, to be delivered again)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals.append((claim, future))
        self._kick()
        await asyncio.shield(future)  # once asked, the removal happens: the claim is no longer ours

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    def _trip(self, writes: list[tuple[SpoolEntry, bytes]],
              removals: list[Claim]) -> "asyncio.Future[tuple[list[Claim | BaseException], list[BaseException | None]]]":
        """Hand one trip to the writer's thread. Its own thread and queue rather than
        asyncio.to_thread: the executor's hand-off (a context copy, a work item, two futures
        chained, a semaphore) cost the event loop 4-5% of its time in the spool benchmark."""
        loop = asyncio.get_running_loop()
        if self._thread is None or self._thread_pid != os.getpid():  # none yet, or forked
            self._trips = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._serve_trips, args=(self._trips,),
                                            name="spool-writer", daemon=True)
            self._thread.start()
            self._thread_pid = os.getpid()
        future: asyncio.Future[tuple[list[Claim | BaseException], list[BaseException | None]]] = loop.create_future()
        self._trips.put(_Trip(writes, removals, future, loop))
        self.trips += 1
        return future

    def _serve_trips(self, trips: "queue.SimpleQueue[_Trip | None]") -> None:
        while (trip := trips.get()) is not None:
            try:
                result = self._io(trip.writes, trip.removals)
            except BaseException as exc:  # _io reports per message; this is a bug guard
                trip.loop.call_soon_threadsafe(_settle, trip.future, None, exc)
            else:
                trip.loop.call_soon_threadsafe(_settle, trip.future, result, None)

    def _io(self, writes: list[tuple[SpoolEntry, bytes]],
            removals: list[Claim]) -> tuple[list[Claim | BaseException], list[BaseException | None]]:
        """One trip to the thread: write a batch, then remove what was delivered."""
        stored = self.spool.put_batch(writes) if writes else []
        removed: list[BaseException | None] = []
        for claim in removals:
            try:
                claim.finish()
                removed.append(None)
            except Exception as exc:  # e.g. EIO: the claim is released, the message stays
                claim.release()
                removed.append(exc)
        return stored, removed

    async def _flush(self) -> None:
        try:
            while self._writes or self._removals:
                batch, self._writes = self._writes[: self.max_batch], self._writes[self.max_batch:]
                writes = [item for item in batch if not item[2].done()]  # else given up: not written
                removals, self._removals = self._removals, []
                if not writes and not removals:
                    continue
                try:
                    stored, removed = await self._trip([(e, c) for e, c, _ in writes],
                                                       [claim for claim, _ in removals])
                except Exception as exc:  # _io reports per message; this is a bug guard
                    stored, removed = [exc] * len(writes), [exc] * len(removals)
                for (_, _, future), result in zip(writes, stored):
                    if isinstance(result, Claim):
                        self.on_stored(result)
                        if not future.done():
                            future.set_result(None)
                    elif not future.done():
                        future.set_exception(result)
                for (_, future), error in zip(removals, removed):
                    if future.done():
                        continue
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        finally:
            self._task = None

    async def close(self) -> None:
        """Finish the trip in progress and what waits for the next; end the thread."""
        while self._task is not None:
            await asyncio.shield(self._task)
        if self._thread is not None and self._thread_pid == os.getpid():
            self._trips.put(None)
            self._thread = None
