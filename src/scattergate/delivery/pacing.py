"""Acceptance first: the spool's deliveries give way to the clients a worker is serving.

A store-and-forward gateway answers a client once the message is on disk; its delivery can
wait a little. When a worker's event loop has more work than CPU and clients are connected,
every delivery running beside the sessions takes CPU they need, and the clients wait longer
for their 250. Postfix gets this order from its process structure (smtpd answers while qmgr
and smtp catch up); one event loop has to choose it. So while the loop is saturated and at
least one client is connected, at most `busy_limit` deliveries run at once and the rest wait
in order. The limit lifts as soon as either condition ends, and also while `backlog_limit`
deliveries are waiting: under a sustained overload the CPU is shared again rather than the
queue growing without end.

Saturated means the loop's thread was running or ready to run (waiting for a CPU) for at least
`threshold` of the last `window` seconds, read from /proc/thread-self/schedstat. It is not
the process's CPU share: on a shared machine a loop that always has work may get only part of
a core, and a worker waiting on a slow downstream is never saturated (its deliveries are then
not held back at all). Where schedstat is missing, the process's CPU time is used instead.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Callable

_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _busy_seconds_schedstat() -> float:
    """Seconds this thread has spent on a CPU or waiting in a run queue for one."""
    running, waiting, _ = _SCHEDSTAT.read_text().split()
    return (int(running) + int(waiting)) / 1e9


def busy_clock() -> Callable[[], float]:
    """The best available clock of "this thread had work": schedstat, else CPU time."""
    try:
        _busy_seconds_schedstat()
    except (OSError, ValueError):
        return time.process_time
    return _busy_seconds_schedstat


class DeliveryPacer:
    """Slots for deliveries: `async with pacer:` around each one (see the module docstring)."""

    def __init__(self, *, busy_limit: int, backlog_limit: int, window: float = 0.2, threshold: float = 0.5,
                 busy: Callable[[], float] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.busy_limit = max(1, busy_limit)
        self.backlog_limit = backlog_limit
        # How many clients the worker serves now; wired by the Gateway (0: never held back).
        self.sessions: Callable[[], int] = lambda: 0
        self._window, self._threshold = window, threshold
        self._busy = busy or busy_clock()
        self._clock = clock
        self._sampled_at, self._busy_at = clock(), self._busy()
        self._saturated = False
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._recheck: asyncio.TimerHandle | None = None

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def holding_back(self) -> bool:
        """Whether deliveries are limited to `busy_limit` now."""
        return (self.sessions() > 0 and len(self._waiters) < self.backlog_limit and self._loop_saturated())

    def _loop_saturated(self) -> bool:
        now = self._clock()
        elapsed = now - self._sampled_at
        if elapsed >= self._window:
            busy = self._busy()
            self._saturated = busy - self._busy_at >= self._threshold * elapsed
            self._sampled_at, self._busy_at = now, busy
        return self._saturated

    def _may_start(self) -> bool:
        return self._running < self.busy_limit or not self.holding_back()

    async def __aenter__(self) -> None:
        if not self._waiters and self._may_start():
            self._running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._schedule_recheck()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted as we were cancelled: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *_: object) -> None:
        self._release()

    def _release(self) -> None:
        self._running -= 1
        self._start_waiters()

    def _start_waiters(self) -> None:
        while self._waiters and self._may_start():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._running += 1
                waiter.set_result(None)

    def _schedule_recheck(self) -> None:
        """While some wait, look again every window: the clients may have gone, or the load
        eased, with no delivery ending to notice it (a slow downstream holds its slot)."""
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(self._window, self._on_recheck)

    def _on_recheck(self) -> None:
        self._recheck = None
        self._start_waiters()
        if self._waiters:
            self._schedule_recheck()

    def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
