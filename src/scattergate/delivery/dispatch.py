"""Where an accepted message goes, and what happened there: a DeliveryOutcome, never a verdict.

Held by the verdict → quarantine; else the spool (store-and-forward), else the downstream inside
the DATA phase (before-queue relay), else a local Maildir. Every write is bounded by the time
left of the DATA deadline; what the client is told is decided by decision/outcomes.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scattergate.address import Address
from scattergate.bounce.policy import content_verdict
from scattergate.decision.sender_proof import envelope_proof
from scattergate.delivery import maildir
from scattergate.delivery.outcome import DeliveryOutcome, Route
from scattergate.delivery.quarantine import Quarantine as QuarantineStore
from scattergate.delivery.relay import DsnParams, Relay
from scattergate.delivery.scheduler import Scheduler
from scattergate.delivery.spool import SpooledRecipient, SpoolEntry
from scattergate.model import Envelope, Quarantine, Session, Verdict

log = logging.getLogger(__name__)


class Delivery:
    def __init__(self, *, relay: Relay | None, scheduler: Scheduler | None, quarantine: QuarantineStore,
                 maildir_root: Path, relay_timeout: float, count: Callable[[str], None]) -> None:
        self.relay = relay
        self.scheduler = scheduler
        self.quarantine = quarantine
        self.maildir_root = maildir_root
        self.relay_timeout = relay_timeout
        self._count = count

    async def deliver(self, session: Session, envelope: Envelope, sender: Address, message: bytes,
                      verdict: Verdict, budget: float) -> DeliveryOutcome:
        """Deliver `message` (headers added, sender marked) within `budget` seconds."""
        if budget <= 0:
            return DeliveryOutcome("deadline", "too_slow")
        if isinstance(verdict, Quarantine):
            return await self._hold(envelope, message, verdict, budget)
        if self.scheduler is not None:
            return await self._spool(session, envelope, sender, message, verdict, budget)
        if self.relay is not None:
            result = await self.relay.send(
                sender, envelope.recipients, message,
                mail_options=relay_options(envelope.mail_options),
                smtputf8="SMTPUTF8" in envelope.mail_options,
                deadline=min(budget, self.relay_timeout),
                dsn=DsnParams(
                    envelope.ret, envelope.envid,
                    tuple((tuple(sorted(d.notify)) if d.notify else None, d.orcpt) for d in envelope.rcpt_dsn),
                ),
            )
            return DeliveryOutcome.answered(result.reply)
        return await self._write_maildir(envelope, message, budget)

    async def _spool(self, session: Session, envelope: Envelope, sender: Address, message: bytes,
                     verdict: Verdict, budget: float) -> DeliveryOutcome:
        """Store-and-forward: durable (fsynced) before the 250; the scheduler delivers it."""
        assert self.scheduler is not None
        proof = envelope_proof(envelope)  # kept: a later bounce goes only to a proven sender
        entry = SpoolEntry(
            id=envelope.message_id,
            sender=str(sender),
            recipients=[
                SpooledRecipient(str(r), sorted(d.notify) if d.notify is not None else None, d.orcpt)
                for r, d in zip(envelope.recipients, envelope.rcpt_dsn)
            ],
            arrival=time.time(),
            client_ip=session.client_ip,
            helo=session.helo,
            ret=envelope.ret,
            envid=envelope.envid,
            mail_options=relay_options(envelope.mail_options),
            spf_result=proof.spf_result,
            dkim_aligned=proof.dkim_aligned,
            content_verdict=content_verdict(verdict.findings),
        )
        try:
            async with asyncio.timeout(budget):
                # Group commit; delivery starts as soon as the message is durable.
                await self.scheduler.put(entry, message)
        except (TimeoutError, OSError) as exc:
            return _trouble("spool", exc)
        self._count("spool.queued")
        return DeliveryOutcome("spool", "done", entry.id)

    async def _hold(self, envelope: Envelope, message: bytes, verdict: Verdict, budget: float) -> DeliveryOutcome:
        reason = "; ".join(str(f) for f in verdict.findings) or "policy"
        try:
            async with asyncio.timeout(budget):
                item = await asyncio.to_thread(
                    self.quarantine.hold, message, str(envelope.sender), [str(r) for r in envelope.recipients], reason
                )
        except (TimeoutError, OSError) as exc:
            return _trouble("quarantine", exc)
        return DeliveryOutcome("quarantine", "done", item.id)

    async def _write_maildir(self, envelope: Envelope, message: bytes, budget: float) -> DeliveryOutcome:
        try:
            async with asyncio.timeout(budget):
                await asyncio.to_thread(maildir.deliver, self.maildir_root, envelope.recipients, message)
        except (TimeoutError, OSError) as exc:
            # After a timeout the write may still finish in its thread: at worst a duplicate
            # after the client's retry, never a loss.
            return _trouble("maildir", exc)
        return DeliveryOutcome("maildir", "done", envelope.message_id)


def _trouble(route: Route, exc: BaseException) -> DeliveryOutcome:
    if isinstance(exc, TimeoutError):
        return DeliveryOutcome(route, "too_slow")
    log.error("%s write failed: %s", route, exc)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeliveryOutcome(route, "no_storage")
    return DeliveryOutcome(route, "failed")


def relay_options(options: Sequence[str]) -> list[str]:
    """The MAIL parameters we pass on: those describing the message. SIZE is recomputed by
    the client library if needed."""
    return [o for o in options if o.split("=", 1)[0] in ("BODY", "SMTPUTF8")]
