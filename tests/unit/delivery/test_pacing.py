"""Acceptance first: the spool's deliveries give way while a saturated worker serves clients."""

from __future__ import annotations

import asyncio

from scattergate.delivery.pacing import DeliveryPacer


class Clocks:
    """A wall clock and a "thread had work" clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0

    def advance(self, seconds: float, *, busy_share: float) -> None:
        self.now += seconds
        self.busy += seconds * busy_share


def pacer(clocks: Clocks, *, sessions: int, busy_limit: int = 2, backlog_limit: int = 100) -> DeliveryPacer:
    made = DeliveryPacer(busy_limit=busy_limit, backlog_limit=backlog_limit, window=0.2, threshold=0.5,
                         busy=lambda: clocks.busy, clock=lambda: clocks.now)
    made.sessions = lambda: sessions
    return made


async def start(pacer_: DeliveryPacer, count: int) -> list[asyncio.Task[None]]:
    """`count` deliveries that take a slot and hold it until cancelled."""
    hold = asyncio.Event()

    async def delivery() -> None:
        async with pacer_:
            await hold.wait()

    tasks = [asyncio.create_task(delivery()) for _ in range(count)]
    await asyncio.sleep(0)
    return tasks


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_saturated_worker_with_clients_runs_only_busy_limit_deliveries() -> None:
    clocks = Clocks()
    paced = pacer(clocks, sessions=5)
    clocks.advance(0.3, busy_share=0.95)
    tasks = await start(paced, 6)
    assert (paced.running, paced.waiting) == (2, 4)
    tasks[0].cancel()  # a delivery ends: the next one in line starts
    await asyncio.sleep(0)
    assert (paced.running, paced.waiting) == (2, 3)
    await stop(tasks)
    assert (paced.running, paced.waiting) == (0, 0)
    paced.close()


async def test_nothing_is_held_back_without_clients_or_when_the_loop_has_time() -> None:
    clocks = Clocks()
    idle_clients = pacer(clocks, sessions=0)
    clocks.advance(0.3, busy_share=1.0)
    tasks = await start(idle_clients, 6)
    assert idle_clients.running == 6
    waiting_on_io = pacer(clocks, sessions=5)  # e.g. a slow downstream: the loop mostly waits
    clocks.advance(0.3, busy_share=0.2)
    tasks += await start(waiting_on_io, 6)
    assert waiting_on_io.running == 6
    await stop(tasks)


async def test_waiting_deliveries_start_once_the_load_eases_even_if_none_ends() -> None:
    clocks = Clocks()
    paced = pacer(clocks, sessions=5)
    clocks.advance(0.3, busy_share=0.95)
    tasks = await start(paced, 5)
    assert paced.waiting == 3
    clocks.advance(0.3, busy_share=0.1)  # the burst is over; the running two still hold their slots
    assert paced._recheck is not None  # the pacer's own re-check is armed while some wait...
    paced._recheck.cancel()
    paced._on_recheck()  # ...and this is what it runs when its `window` is over
    assert (paced.running, paced.waiting) == (5, 0)
    await stop(tasks)
    paced.close()


async def test_a_full_backlog_shares_the_cpu_again() -> None:
    clocks = Clocks()
    paced = pacer(clocks, sessions=5, backlog_limit=3)
    clocks.advance(0.3, busy_share=0.95)
    tasks = await start(paced, 5)  # 2 run, 3 wait: the backlog limit is reached
    assert paced.waiting == 3
    tasks += await start(paced, 1)
    paced._start_waiters()  # what the next release or re-check does
    assert paced.waiting < 3
    await stop(tasks)
    paced.close()
