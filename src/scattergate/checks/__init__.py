"""Checks: one small module per check; each observes and returns Findings, never replies.

Two kinds, so the hot path stays cheap:
- a *local* check is a plain function of the context (recipient table, relay rules, limits);
- a *remote* check awaits something outside the process (DNS, the downstream, a scanner) and
  runs under its own time budget; running out of it is itself a finding ("timeout").

The budget's timer is armed only when a remote check first waits: most answer at once (a
cached DNS answer, the content alone), and a timer armed and cancelled for each of them was a
twentieth of a worker's time.
"""

from __future__ import annotations

import asyncio
import logging
import types
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Generator, Iterable, Sequence

from scattergate.address import Address
from scattergate.logfmt import SessionLog
from scattergate.model import Envelope, Finding, Phase, Session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CheckContext:
    session: Session
    envelope: Envelope | None = None
    recipient: Address | None = None
    content: bytes | None = None
    # Findings of this phase before the remote checks ran (e.g. batv.valid at RCPT), so a
    # remote check can tell when its answer could not matter.
    earlier: tuple[Finding, ...] = ()


LocalCheck = Callable[[CheckContext], Iterable[Finding]]
RemoteRun = Callable[[CheckContext], Awaitable[Sequence[Finding]]]


@dataclass(frozen=True, slots=True)
class RemoteCheck:
    name: str
    run: RemoteRun
    budget: float


@dataclass(slots=True)
class PhaseChecks:
    """The checks of one SMTP phase: local ones first, then remote ones concurrently."""

    local: list[LocalCheck]
    remote: list[RemoteCheck]

    def run_local(self, ctx: CheckContext) -> list[Finding]:
        findings: list[Finding] = []
        for check in self.local:
            findings.extend(check(ctx))
        return findings

    async def run_remote(self, ctx: CheckContext, deadline: float) -> list[Finding]:
        """The remote checks' findings, in check order. Concurrent, yet without a task for a
        check that answers at once: each takes its first step here, in turn, while they all
        do (cached DNS, the content alone: nearly every message). The first that waits is
        finished in this task, the checks after it in tasks of their own started then, so
        they run while it waits. (A task per check cost a task switch and two turns of the
        event loop per message.)"""
        findings: list[Finding] = []
        for position, check in enumerate(self.remote):
            step = _first_step(check, ctx)
            if isinstance(step, list):
                findings += step
                continue
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(_run_with_budget(other, ctx, deadline))
                     for other in self.remote[position + 1:]]
            try:
                findings += await _finish(check, ctx, deadline, step)
                for task in tasks:
                    findings += await task
            finally:
                for task in tasks:
                    task.cancel()  # only if we were cancelled: the others must not outlive us
            break
        return findings


_Waiting = tuple["Coroutine[Any, Any, Any] | Awaitable[Any]", Any]
# _first_step: the check returned an awaitable that is not a coroutine (nothing run yet).
_NOT_STARTED = object()


def _first_step(check: RemoteCheck, ctx: CheckContext) -> list[Finding] | _Waiting:
    """Start `check`: its findings if it answered without waiting, else (what is running,
    what it waits for). No timer yet: a check that answers at once needs none."""
    try:
        running = check.run(ctx)
        if isinstance(running, types.CoroutineType):  # (typing's Coroutine: a slow subclass check)
            try:
                return running, running.send(None)
            except StopIteration as done:
                return list(done.value)
        return running, _NOT_STARTED
    except Exception as exc:
        return _failed(check, ctx, exc)


async def _finish(check: RemoteCheck, ctx: CheckContext, deadline: float, step: _Waiting) -> list[Finding]:
    """The rest of a check that waits, under its budget from here."""
    running, waiting_for = step
    budget = min(check.budget, deadline)
    try:
        async with asyncio.timeout(budget):
            if waiting_for is _NOT_STARTED:  # an awaitable that is not a coroutine
                return list(await running)
            return list(await _Resumed(running, waiting_for))  # type: ignore[arg-type]
    except TimeoutError:
        return [Finding(check.name, "timeout", f"{check.name} gave no answer within {budget:g} s")]
    except Exception as exc:
        return _failed(check, ctx, exc)


async def _run_with_budget(check: RemoteCheck, ctx: CheckContext, deadline: float) -> list[Finding]:
    step = _first_step(check, ctx)
    if isinstance(step, list):
        return step
    return await _finish(check, ctx, deadline, step)


def _failed(check: RemoteCheck, ctx: CheckContext, exc: Exception) -> list[Finding]:
    # A broken check must tempfail the client, never crash the session.
    SessionLog(log, ctx.session.id).exception("check %s failed", check.name)
    return [Finding(check.name, "error", f"{check.name} failed: {type(exc).__name__}")]


class _Resumed:
    """Awaits a coroutine that has already taken its first step (`waiting_for`: what that step
    yielded to the task). What the task sends or throws in (a result, a cancellation) goes on
    to the coroutine, as if it had been awaited from the start."""

    __slots__ = ("_coroutine", "_waiting_for")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], waiting_for: Any) -> None:
        self._coroutine, self._waiting_for = coroutine, waiting_for

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, waiting_for = self._coroutine, self._waiting_for
        while True:
            try:
                sent = yield waiting_for
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: B036 (a cancellation goes on to the coroutine)
                try:
                    waiting_for = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_for = coroutine.send(sent)
                except StopIteration as done:
                    return done.value


def empty() -> PhaseChecks:
    return PhaseChecks([], [])


def by_phase() -> dict[Phase, PhaseChecks]:
    return {phase: empty() for phase in Phase}
