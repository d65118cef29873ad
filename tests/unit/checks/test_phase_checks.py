"""PhaseChecks.run_remote: remote checks run concurrently, findings in check order, each
within its budget, and none outlives a cancelled caller."""

from __future__ import annotations

import asyncio

import pytest

from scattergate.checks import CheckContext, PhaseChecks, RemoteCheck
from scattergate.model import Finding, Session


def _ctx() -> CheckContext:
    return CheckContext(Session(client_ip="192.0.2.1"))


async def test_checks_that_wait_for_each_other_all_finish() -> None:
    """Each check needs the other to have started: only concurrent runs finish."""
    first_in, second_in = asyncio.Event(), asyncio.Event()

    async def first(ctx: CheckContext) -> list[Finding]:
        first_in.set()
        await second_in.wait()
        return [Finding("a", "pass")]

    async def second(ctx: CheckContext) -> list[Finding]:
        second_in.set()
        await first_in.wait()
        return [Finding("b", "pass")]

    checks = PhaseChecks([], [RemoteCheck("a", first, 5), RemoteCheck("b", second, 5)])
    findings = await asyncio.wait_for(checks.run_remote(_ctx(), 10), 5)
    assert findings == [Finding("a", "pass"), Finding("b", "pass")]


async def test_findings_keep_check_order_and_a_slow_check_times_out_alone() -> None:
    async def instant(ctx: CheckContext) -> list[Finding]:
        return [Finding("a", "pass")]

    async def slow(ctx: CheckContext) -> list[Finding]:
        await asyncio.sleep(10)
        return []

    async def soon(ctx: CheckContext) -> list[Finding]:
        await asyncio.sleep(0)
        return [Finding("c", "pass")]

    checks = PhaseChecks([], [RemoteCheck("a", instant, 5), RemoteCheck("b", slow, 0.05), RemoteCheck("c", soon, 5)])
    findings = await checks.run_remote(_ctx(), 10)
    assert [(f.check, f.result) for f in findings] == [("a", "pass"), ("b", "timeout"), ("c", "pass")]


@pytest.mark.parametrize("first_waits", [True, False])
async def test_a_cancelled_caller_leaves_no_check_running(first_waits: bool) -> None:
    started: list[asyncio.Task[object] | None] = []
    cancelled = 0

    async def waits(ctx: CheckContext) -> list[Finding]:
        nonlocal cancelled
        started.append(asyncio.current_task())
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return []

    checks = PhaseChecks([], [RemoteCheck("a", waits, 30), RemoteCheck("b", waits, 30)])
    if not first_waits:
        async def instant(ctx: CheckContext) -> list[Finding]:
            return []
        checks = PhaseChecks([], [RemoteCheck("a", instant, 30), RemoteCheck("b", waits, 30)])
    caller = asyncio.get_running_loop().create_task(checks.run_remote(_ctx(), 60))
    for _ in range(100):  # bounded: the checks start within a few loop turns
        if len(started) == (2 if first_waits else 1):
            break
        await asyncio.sleep(0)
    assert len(started) == (2 if first_waits else 1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert cancelled == len(started)


# -- the budget's timer is armed only once a check waits ----------------------------------------------------


class TimerCounting:
    """Counts the timers the running loop arms (asyncio.timeout arms one with call_at)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.armed = 0
        self._real = self.loop.call_at

    def __enter__(self) -> "TimerCounting":
        def counting(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.armed += 1
            return self._real(when, callback, *args, **kwargs)

        self.loop.call_at = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_at = self._real  # type: ignore[method-assign]


async def test_a_check_that_answers_at_once_arms_no_timer() -> None:
    async def instant(ctx: CheckContext) -> list[Finding]:
        return [Finding("a", "pass")]

    with TimerCounting() as timers:
        findings = await PhaseChecks([], [RemoteCheck("a", instant, 5)]).run_remote(_ctx(), 10)
    assert findings == [Finding("a", "pass")] and timers.armed == 0


async def test_a_check_that_waits_runs_under_its_budget_from_its_first_wait() -> None:
    async def waits_then_answers(ctx: CheckContext) -> list[Finding]:
        for _ in range(3):
            await asyncio.sleep(0)  # a bare yield to the loop
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # a future
        return [Finding("a", "pass")]

    async def waits_forever(ctx: CheckContext) -> list[Finding]:
        await asyncio.sleep(0)
        await asyncio.Event().wait()
        return []

    with TimerCounting() as timers:
        answered = await PhaseChecks([], [RemoteCheck("a", waits_then_answers, 5)]).run_remote(_ctx(), 10)
    assert answered == [Finding("a", "pass")] and timers.armed == 1
    timed_out = await asyncio.wait_for(PhaseChecks([], [RemoteCheck("b", waits_forever, 0.05)]).run_remote(_ctx(), 10), 5)
    assert [(f.check, f.result) for f in timed_out] == [("b", "timeout")]


async def test_a_check_failing_after_its_first_wait_is_an_error_finding() -> None:
    async def fails_later(ctx: CheckContext) -> list[Finding]:
        await asyncio.sleep(0)
        raise RuntimeError("broken")

    async def fails_at_once(ctx: CheckContext) -> list[Finding]:
        raise RuntimeError("broken")

    for run in (fails_later, fails_at_once):
        findings = await PhaseChecks([], [RemoteCheck("x", run, 5)]).run_remote(_ctx(), 10)
        assert [(f.check, f.result) for f in findings] == [("x", "error")]


async def test_cancelling_the_caller_reaches_a_check_resumed_after_its_first_wait() -> None:
    entered, cleaned_up = asyncio.Event(), []

    async def waits(ctx: CheckContext) -> list[Finding]:
        await asyncio.sleep(0)
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.append(True)
        return []

    caller = asyncio.create_task(PhaseChecks([], [RemoteCheck("a", waits, 5)]).run_remote(_ctx(), 10))
    await asyncio.wait_for(entered.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cleaned_up == [True]


async def test_checks_that_answer_at_once_run_in_the_callers_task() -> None:
    """No task per check while the checks answer without waiting (a task switch and two turns
    of the loop each); from the first that waits, the later ones get their own and run while
    it waits."""
    ran_in: dict[str, asyncio.Task[object] | None] = {}
    second_started = asyncio.Event()

    def instant(name: str):  # type: ignore[no-untyped-def]
        async def run(ctx: CheckContext) -> list[Finding]:
            ran_in[name] = asyncio.current_task()
            return [Finding(name, "pass")]
        return run

    async def waits_for_the_next(ctx: CheckContext) -> list[Finding]:
        ran_in["c"] = asyncio.current_task()
        await second_started.wait()
        return [Finding("c", "pass")]

    async def starts(ctx: CheckContext) -> list[Finding]:
        ran_in["d"] = asyncio.current_task()
        second_started.set()
        return [Finding("d", "pass")]

    checks = PhaseChecks([], [RemoteCheck("a", instant("a"), 5), RemoteCheck("b", instant("b"), 5),
                              RemoteCheck("c", waits_for_the_next, 5), RemoteCheck("d", starts, 5)])
    findings = await asyncio.wait_for(checks.run_remote(_ctx(), 10), 5)
    assert [f.check for f in findings] == ["a", "b", "c", "d"]
    assert ran_in["a"] is ran_in["b"] is ran_in["c"]
    assert ran_in["d"] is not ran_in["c"]
