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
        if not self.remote:
            return []
        first, *others = self.remote
        if not others:
            return await _run_with_budget(first, ctx, deadline)
        # Concurrently, but the first check runs in this task: a task fewer per phase (and no
        # gather), and often every check answers without waiting (cached DNS, content only).
        # The others start as soon as this one waits for anything, or right after it.
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(_run_with_budget(check, ctx, deadline)) for check in others]
        try:
            findings = await _run_with_budget(first, ctx, deadline)
            for task in tasks:
                findings += await task
        finally:
            for task in tasks:
                task.cancel()  # only if we were cancelled: the others must not outlive us
        return findings


async def _run_with_budget(check: RemoteCheck, ctx: CheckContext, deadline: float) -> list[Finding]:
    budget = min(check.budget, deadline)
    try:
        running = check.run(ctx)
        if isinstance(running, types.CoroutineType):  # (typing's Coroutine: a slow subclass check)
            # Its first step now, with no timer: a check that answers without waiting is done.
            try:
                waiting_for = running.send(None)
            except StopIteration as done:
                return list(done.value)
            async with asyncio.timeout(budget):  # it waits: the rest runs under the budget
                return list(await _Resumed(running, waiting_for))
        async with asyncio.timeout(budget):
            return list(await running)
    except TimeoutError:
        return [Finding(check.name, "timeout", f"{check.name} gave no answer within {budget:g} s")]
    except Exception as exc:  # a broken check must tempfail the client, never crash the session
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
