"""Waking the running schedulers of a spool at once (`scattergate queue flush/release`).

Each scheduler binds a unix datagram socket under `<spool>/wake/`; a queue tool sends one
datagram to every socket there. A socket nobody listens on any more (a worker killed with -9)
refuses the datagram and is removed. Datagrams, not signals: no pid files, no pid reuse, no
clash with signals the server already gives a meaning (SIGHUP reloads), and every worker of
every gateway sharing the spool is reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

from scattergate.model import new_id

log = logging.getLogger(__name__)

WAKE_DIR = "wake"
_MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes; beyond, address the file through its directory


def _address(path: Path, use: Callable[[str], None]) -> None:
    """Call `use` with an address for `path` that fits in sockaddr_un: the path itself, or, when
    it is too long (deep test or data directories), the name under /proc/self/fd/<dir fd>."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        use(str(path))
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        use(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)


class WakeListener:
    """One scheduler's socket: a datagram calls `on_wake` on the event loop."""

    def __init__(self, spool_root: Path, on_wake: Callable[[], None]) -> None:
        self.path = spool_root / WAKE_DIR / f"{os.getpid()}-{new_id()}"
        self.on_wake = on_wake
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Listen (raises OSError when it cannot: the scheduler's poll still finds the mail)."""
        self.path.parent.mkdir(exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            _address(self.path, sock.bind)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            self.path.unlink(missing_ok=True)
            raise
        self._sock = sock

    def _readable(self) -> None:
        assert self._sock is not None
        woken = False
        for _ in range(64):  # drain what is there; bounded
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            woken = True
        if woken:
            self.on_wake()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        except RuntimeError:  # no running loop (closing after it stopped)
            pass
        sock.close()
        self.path.unlink(missing_ok=True)


def _sockets(spool_root: Path) -> Iterator[Path]:
    try:
        entries = sorted((spool_root / WAKE_DIR).iterdir())
    except FileNotFoundError:
        return
    for path in entries:
        if path.is_socket():
            yield path


def wake_all(spool_root: Path) -> int:
    """Wake every scheduler listening on this spool; return how many were reached."""
    reached = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        for path in _sockets(spool_root):
            try:
                _address(path, lambda address: sock.sendto(b"wake", address))
                reached += 1
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # its process is gone
            except BlockingIOError:
                reached += 1  # its queue is full of wake-ups already: it will wake
            except OSError as exc:
                log.warning("cannot wake %s: %s", path, exc)
    return reached
