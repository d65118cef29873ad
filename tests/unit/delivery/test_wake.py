"""The wake sockets of the spool's schedulers (`scattergate queue flush` reaches each one)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from scattergate.delivery.wake import WAKE_DIR, WakeListener, wake_all


async def _woken_by_wake_all(root: Path) -> tuple[int, int]:
    woken = asyncio.Event()
    listener = WakeListener(root, woken.set)
    listener.start()
    try:
        reached = await asyncio.to_thread(wake_all, root)
        async with asyncio.timeout(10):
            await woken.wait()
        return reached, len(list((root / WAKE_DIR).iterdir()))
    finally:
        listener.close()


def test_a_listener_is_woken_and_removes_its_socket(tmp_path: Path) -> None:
    assert asyncio.run(_woken_by_wake_all(tmp_path)) == (1, 1)
    assert list((tmp_path / WAKE_DIR).iterdir()) == []


def test_a_spool_path_too_long_for_sockaddr_un_still_works(tmp_path: Path) -> None:
    root = tmp_path / ("deep-" * 30)  # well beyond the 108 bytes of sun_path
    root.mkdir()
    assert len(str(root / WAKE_DIR / "x")) > 108
    assert asyncio.run(_woken_by_wake_all(root)) == (1, 1)


def test_the_socket_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    (tmp_path / WAKE_DIR).mkdir()
    stale = tmp_path / WAKE_DIR / "999999-gone"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(stale))  # bound, then closed: nobody listens any more
    assert stale.exists()
    assert wake_all(tmp_path) == 0
    assert not stale.exists()


def test_no_spool_wake_directory_reaches_nobody(tmp_path: Path) -> None:
    assert wake_all(tmp_path) == 0
