"""Delivers the spool with retries and back-off (RFC 5321 §4.5.4.1).

Each due message is claimed (so parallel workers never deliver it twice), offered to the
downstream, and each recipient ends delivered (2xx), failed (5xx, or still 4xx at give-up
time) or pending (4xx: retried after a growing interval). Failures go to the bounce notifier
(DSN to a proven sender, else quarantine); the message leaves the spool when no recipient is
pending. A restart simply finds the spool as it was.

New mail does not wait for a scan: `put` stores it through the spool's group commit and the
claim, with the content still in memory, goes straight to a delivery task. The periodic scan
is for retries, for what a restart or another worker left, and for DSNs. Every delivery takes
a slot from the pacer (delivery/pacing.py): while the worker's loop is saturated and clients
are connected, only a few run at once, so that the clients get their 250 first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from scattergate.bounce.notifier import BounceNotifier
from scattergate.config import SpoolConfig
from scattergate.delivery.pacing import DeliveryPacer
from scattergate.delivery.relay import DownstreamPool, Outbound, deliver_each
from scattergate.delivery.spool import DELIVERED, FAILED, Claim, Incomplete, Spool, SpoolEntry, SpoolWriter
from scattergate.delivery.wake import WakeListener
from scattergate.logfmt import quote

log = logging.getLogger(__name__)

_IDLE_POLL = 5.0  # seconds between scans when nothing is due (another worker may add mail)
# New mail handed over for immediate delivery, at most; beyond it, it waits for the next scan
# (each hand-over holds a file descriptor and the content in memory, so both are bounded).
_MAX_HANDOVERS = 512
_MAX_HANDOVER_BYTES = 64 * 1024 * 1024


def retry_delay(attempts: int, config: SpoolConfig) -> float:
    """Interval before the next attempt after `attempts` failed ones: doubling, capped."""
    return float(min(config.retry_max, config.retry_initial * 2 ** max(0, attempts - 1)))


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        pool: DownstreamPool,
        notifier: BounceNotifier,
        config: SpoolConfig,
        *,
        attempt_timeout: float,
        dsn_pool: DownstreamPool | None = None,
        clock: Callable[[], float] = time.time,
        count: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.spool = spool
        self.pool = pool
        self.notifier = notifier
        self.config = config
        self.attempt_timeout = attempt_timeout
        # DSNs may leave by their own route (e.g. a smarthost) instead of the downstream.
        self.dsn_pool = dsn_pool or pool
        self.clock = clock
        self._count = count
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writer = SpoolWriter(spool, self._handover)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._handover_bytes = 0
        self.pacer = DeliveryPacer(busy_limit=config.deliveries_when_busy, backlog_limit=config.busy_backlog)
        self._next_scan = 0.0  # when the scan loop wakes by itself next (clock time)
        # `scattergate queue flush/release` wakes us through it (delivery/wake.py).
        self._waker = WakeListener(spool.root, self.wake)

    def wake(self) -> None:
        """New mail was spooled: look at the queue now rather than at the next poll."""
        self._wake.set()

    async def put(self, entry: SpoolEntry, content: bytes) -> None:
        """Spool a message durably (raises OSError if it could not be); delivery starts at once."""
        await self.writer.put(entry, content)

    def _handover(self, claim: Claim) -> None:
        size = len(claim.content()) if claim.has_content else 0  # the writer's claims carry it
        if len(self._deliveries) >= _MAX_HANDOVERS or self._handover_bytes + size > _MAX_HANDOVER_BYTES:
            claim.release()  # stored: the next scan finds it
            self.wake()
            return
        self._handover_bytes += size
        task = asyncio.get_running_loop().create_task(self._deliver_new(claim, size))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver_new(self, claim: Claim, size: int) -> None:
        try:
            async with self.pacer:
                next_attempt = await self._attempt_claimed(claim)
        except BaseException:
            claim.release()  # e.g. cancelled while waiting for a slot (stop): it stays spooled
            raise
        finally:
            self._handover_bytes -= size
        if next_attempt is not None and next_attempt < self._next_scan:
            self.wake()  # deferred: the scan loop must not sleep past its retry

    def start(self) -> None:
        removed = self.spool.recover()
        if removed:
            log.info("spool: removed %d incomplete writes (never acknowledged)", removed)
        log.info("spool: %d messages queued", len(self.spool))
        try:
            self.spool.spares.stock()
        except OSError as exc:  # files are then created per message, as they would be without it
            log.warning("spool: cannot keep spare files in %s: %s", self.spool.spares.parent, exc)
        try:
            self._waker.start()
        except OSError as exc:  # the periodic scan still finds flushed mail, only later
            log.warning("spool: cannot listen for queue flush requests at %s: %s", self._waker.path, exc)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._waker.close()
        self.pacer.close()
        await self.writer.close()
        for task in list(self._deliveries):
            task.cancel()  # each releases its claim; the message stays spooled
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_due = await self.run_once()
            except Exception:  # the queue must keep running: log, wait, try again
                log.exception("spool run failed")
                next_due = self.clock() + _IDLE_POLL
            delay = min(_IDLE_POLL, max(0.0, next_due - self.clock()))
            self._next_scan = self.clock() + delay
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def run_once(self) -> float:
        """Attempt every due message; return when the next one falls due."""
        now = self.clock()
        next_due = now + _IDLE_POLL
        entries = await asyncio.to_thread(lambda: list(self.spool.entries()))
        due = []
        for entry in entries:
            if entry.held:
                continue  # until `scattergate queue release`, which wakes us
            if entry.next_attempt <= now:
                due.append(entry.id)
            else:
                next_due = min(next_due, entry.next_attempt)
        # A few deliveries in parallel, as many as the downstream pool allows.
        results = await asyncio.gather(*(self._attempt(message_id) for message_id in due))
        for result in results:
            if result is not None:
                next_due = min(next_due, result)
        return next_due

    async def _attempt(self, message_id: str) -> float | None:
        async with self.pacer:  # a slot first: a claim waiting for one would hold its file open
            return await self._attempt_slot(message_id)

    async def _attempt_slot(self, message_id: str) -> float | None:
        # Claimed on the loop itself (a non-blocking flock and a small read): a claim taken in a
        # thread whose awaiting task is cancelled would leak its lock for the process's life.
        claim = self.spool.claim(message_id, read=False)  # the content is read in _deliver's thread
        if claim is None:
            return None
        if claim.entry.held:  # put on hold since the scan read it (the claim reads it afresh)
            claim.release()
            return None
        return await self._attempt_claimed(claim)

    async def _attempt_claimed(self, claim: Claim) -> float | None:
        try:
            return await self._deliver(claim)
        finally:
            claim.release()  # idempotent: a finished claim is released already

    async def _deliver(self, claim: Claim) -> float | None:
        entry = claim.entry
        try:
            content = claim.content() if claim.has_content else await asyncio.to_thread(claim.content)
        except Incomplete as why:  # a crash cut it short: never acknowledged, never delivered
            self.spool.set_aside(entry.id, why)
            return None
        pending = entry.pending()
        pool = self.dsn_pool if entry.is_dsn else self.pool
        dsn_support: list[bool] = []
        replies = await deliver_each(
            pool,
            entry.sender,
            [Outbound(r.address, tuple(r.notify) if r.notify else None, r.orcpt) for r in pending],
            content,
            ret=entry.ret,
            envid=entry.envid,
            smtputf8="SMTPUTF8" in entry.mail_options,
            deadline=self.attempt_timeout,
            dsn_support=dsn_support,
        )
        now = self.clock()
        entry.attempts += 1
        failed = []
        relayed = []
        delivered = []
        for rcpt in pending:
            reply = replies[rcpt.address]
            rcpt.reply = str(reply)
            if reply.code < 300:
                rcpt.state = DELIVERED
                delivered.append(rcpt)
                self._count("spool.delivered")
                if rcpt.notify and "SUCCESS" in rcpt.notify and dsn_support == [False]:
                    relayed.append(rcpt)
            elif reply.code >= 500:
                rcpt.state = FAILED
                failed.append(rcpt)
        remote = pool.host
        if delivered:
            # Where it went and what the downstream said (its queue ID): an admin's trail.
            # The reply is the downstream's text: quoted, like every text another party wrote.
            log.info("message %s: delivered to %s:%s for %d recipient(s): reply=%s", entry.id, pool.host,
                     pool.port, len(delivered), quote(delivered[0].reply))
        if relayed:
            await asyncio.to_thread(self.notifier.relayed, entry, content, relayed, remote)
        still = entry.pending()
        if still and now - entry.arrival >= self.config.give_up:
            for rcpt in still:
                rcpt.state = FAILED
                rcpt.reply = (f"550 5.4.7 Delivery time expired after {entry.attempts} attempts;"
                              f" last reply: {rcpt.reply or 'none'}")
            failed.extend(still)
            still = []
        if failed:
            self._count("spool.failed")
            outcome = await asyncio.to_thread(self.notifier.failed, entry, content, failed, remote)
            log.info("message %s: %d recipient(s) failed permanently: %s", entry.id, len(failed), outcome)
        if not still:
            await self.writer.remove(claim)
            return None
        if not entry.delay_notified and now - entry.arrival >= self.config.delay_warning:
            entry.delay_notified = True
            wanting = [r for r in still if r.notify and "DELAY" in r.notify]
            if wanting:
                await asyncio.to_thread(self.notifier.delayed, entry, content, wanting, remote)
        entry.next_attempt = now + retry_delay(entry.attempts, self.config)
        await asyncio.to_thread(claim.save)
        log.info("message %s: %d recipient(s) deferred, next attempt in %.0f s",
                 entry.id, len(still), entry.next_attempt - now)
        return entry.next_attempt
