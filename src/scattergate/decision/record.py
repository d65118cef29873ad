"""One log line per decision, decision counters, and the decision history in the state store.

Logging happens at once; counters and history are buffered and written in batches from a
thread, so the event loop never waits on the disk for bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Iterable, Protocol, Sequence

from scattergate.logfmt import SessionLog, fields
from scattergate.model import Phase, Session, Verdict
from scattergate.state.store import DecisionRecord, StateStore

log = logging.getLogger("scattergate.decision")


def format_decision(record: DecisionRecord) -> str:
    """The decision line. Every field is logfmt-quoted: HELO, addresses, the reply and the
    findings' details are the client's text, and raw they could forge fields of this line
    (`EHLO x.test client=192.0.2.66 verdict=accept`) or carry terminal escapes."""
    return "decision " + fields(**{
        "session": record.session,
        "client": record.client,
        "helo": record.helo or None,
        "from": f"<{record.sender}>",
        "to": ",".join(f"<{r}>" for r in record.recipients) or None,
        "phase": record.phase,
        "verdict": record.verdict,
        "reply": record.reply,
        "findings": ",".join(record.findings) or None,
    })


class DecisionObserver(Protocol):
    """Sees every decision and counter increment as it happens (the metrics hook)."""

    def decided(self, record: DecisionRecord, verdict: Verdict) -> None: ...

    def counted(self, name: str, amount: int) -> None:
        """Every count() but a decision's own decisions.* and findings.* counts (decided() has them)."""


class DecisionRecorder:
    def __init__(self, store: StateStore, *, flush_interval: float = 1.0,
                 observers: Iterable[DecisionObserver] = ()) -> None:
        self._store = store
        self.observers: list[DecisionObserver] = list(observers)
        self._interval = flush_interval
        self._counters: Counter[str] = Counter()
        self._decisions: list[DecisionRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failing = False
        # One write at a time: a flush must not return while an earlier one (the periodic
        # task's) still has counts on their way to the store.
        self._flushing = asyncio.Lock()

    def record(
        self,
        session: Session,
        phase: Phase,
        sender: str,
        recipients: Sequence[str],
        verdict: Verdict,
    ) -> DecisionRecord:
        record = DecisionRecord(
            time=time.time(),
            session=session.id,
            client=session.client_ip,
            helo=session.helo,
            sender=sender,
            recipients=tuple(recipients),
            phase=phase.value,
            verdict=verdict.name,
            reply=str(verdict.reply),
            findings=tuple(str(f) for f in verdict.findings),
        )
        if log.isEnabledFor(logging.INFO):  # formatting the line costs more than the check
            log.info("%s", format_decision(record), extra={"decision": record})
        # Straight into the counters: observers see these with their verdict in decided(),
        # not once more each through counted() (every decision pays for this loop).
        counters = self._counters
        counters[f"decisions.{record.phase}.{record.verdict}"] += 1
        for finding in verdict.findings:
            counters[f"findings.{finding.key}"] += 1
        self._decisions.append(record)
        for observer in self.observers:
            try:
                observer.decided(record, verdict)
            except Exception:  # an observer must never fail a decision
                SessionLog(log, session.id).exception("decision observer failed")
        return record

    def count(self, name: str, amount: int = 1) -> None:
        self._counters[name] += amount
        for observer in self.observers:
            try:
                observer.counted(name, amount)
            except Exception:
                log.exception("decision observer failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            await self.flush()

    async def flush(self) -> None:
        """Everything recorded so far is in the store when this returns (or its loss logged)."""
        async with self._flushing:
            await self._write_pending()

    async def _write_pending(self) -> None:
        counters, self._counters = dict(self._counters), Counter()
        decisions, self._decisions = self._decisions, []
        if not counters and not decisions:
            return
        try:
            await asyncio.to_thread(self._store.add, counters, decisions)
        except Exception as exc:
            # Bookkeeping must never take the gateway down; the counts are lost, mail is not.
            # One traceback per outage, then one line per failed flush.
            logger = logging.getLogger(__name__)
            if not self._failing:
                logger.exception("cannot write decisions to the state store")
            else:
                logger.warning("state store still unavailable (%s): %d decisions not recorded", exc, len(decisions))
            self._failing = True
        else:
            if self._failing:
                logging.getLogger(__name__).info("state store available again")
            self._failing = False

    async def stop(self) -> None:
        """Write what is left. The periodic flush is asked to end, not cancelled: cancelled
        during its write, it would leave that write running in its thread while the process
        closes the store and exits (counts lost; seen as `sessions 4 == 6` in a test)."""
        if self._task is not None:
            self._stopping.set()
            try:
                await self._task
            except asyncio.CancelledError:
                if not self._task.cancelled():  # we are cancelled, not the periodic task
                    raise
        await self.flush()
