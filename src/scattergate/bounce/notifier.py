"""What happens when a spooled message fails: a DSN to a proven sender, or quarantine.

This is where the safe-bounce rule (`bounce/policy.py`) is applied. A DSN is built only when
`may_bounce` allows it for the recipient's NOTIFY and the DSN rate limit has room; it leaves
through the spool like any message (null sender, NOTIFY=NEVER, never bounced itself).
Otherwise the message is quarantined and the log says "bounce suppressed: <reason>".
Blocking (file writes): call it from a thread.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Sequence

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn
from scattergate.bounce.policy import may_bounce
from scattergate.bounce.dsn_rate import DsnRateLimiter
from scattergate.delivery.quarantine import Quarantine
from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry
from scattergate.logfmt import fields

log = logging.getLogger(__name__)


def _status_of(reply: str, default: str) -> str:
    parts = reply.split(" ", 2)
    if len(parts) > 1 and parts[1].count(".") == 2 and parts[1][0] in "245":
        return parts[1]
    return default


class BounceNotifier:
    def __init__(
        self,
        spool: Spool,
        quarantine: Quarantine,
        limiter: DsnRateLimiter,
        *,
        reporting_mta: str,
        max_return: int,
        on_dsn: Callable[[], None] = lambda: None,
        count: Callable[[str], None] = lambda name: None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.spool = spool
        self.quarantine = quarantine
        self.limiter = limiter
        self.reporting_mta = reporting_mta
        self.max_return = max_return
        self.on_dsn = on_dsn
        self._count = count
        # DKIM-signs our DSNs (rewrite/dkim_sign.py), so receivers that check DMARC take them.
        self._sign = sign

    def failed(self, entry: SpoolEntry, content: bytes, failed: Sequence[SpooledRecipient], remote_mta: str) -> str:
        """Permanent failure of `failed`: send a DSN or quarantine. Returns what was done."""
        return self._notify(entry, content, failed, remote_mta, "failure")

    def delayed(self, entry: SpoolEntry, content: bytes, pending: Sequence[SpooledRecipient], remote_mta: str) -> str:
        """NOTIFY=DELAY warning; nothing is quarantined for a delay (the message is still queued)."""
        return self._notify(entry, content, pending, remote_mta, "delay")

    def relayed(self, entry: SpoolEntry, content: bytes, done: Sequence[SpooledRecipient], remote_mta: str) -> str:
        """NOTIFY=SUCCESS to a downstream without DSN: we report "relayed" ourselves (RFC 3461 §5.2.2)."""
        return self._notify(entry, content, done, remote_mta, "success")

    def _notify(
        self, entry: SpoolEntry, content: bytes, recipients: Sequence[SpooledRecipient], remote_mta: str, kind: str
    ) -> str:
        allowed: list[SpooledRecipient] = []
        reasons: list[str] = []
        for rcpt in recipients:
            if entry.is_dsn:
                reasons.append("null-sender")  # a DSN of ours that failed: never bounce a bounce
                continue
            decision = may_bounce(
                entry.sender,
                content_verdict=entry.content_verdict,
                spf_result=entry.spf_result,
                dkim_aligned_pass=entry.dkim_aligned,
                notify=rcpt.notify,
                kind=kind,  # type: ignore[arg-type]
            )
            (allowed.append(rcpt) if decision.allowed else reasons.append(decision.reason))
        if allowed:
            limit = self.limiter.allow(entry.sender)
            if not limit.allowed:
                reasons.append(limit.reason)
                allowed = []
        if allowed:
            self._send_dsn(entry, content, allowed, remote_mta, kind)
        suppressed = [r for r in recipients if r not in allowed]
        if not suppressed:
            return "dsn"
        reason = ", ".join(dict.fromkeys(reasons)) or "unknown"
        self._count(f"dsn.suppressed.{kind}")
        if kind != "failure":
            log.info("%s notice suppressed: %s %s", kind, reason, fields(message=entry.id, **{"from": f"<{entry.sender}>"}))
            return f"suppressed: {reason}"
        item = self.quarantine.hold(content, entry.sender, [r.address for r in suppressed], f"bounce suppressed: {reason}")
        log.warning(
            "bounce suppressed: %s %s", reason,  # our reason; the addresses are the client's, quoted
            fields(message=entry.id, **{"from": f"<{entry.sender}>"},
                   to=",".join(f"<{r.address}>" for r in suppressed), quarantined=item.id),
        )
        return f"quarantined: {reason}"

    def _send_dsn(
        self, entry: SpoolEntry, content: bytes, recipients: Sequence[SpooledRecipient], remote_mta: str, kind: str
    ) -> None:
        now = datetime.now(timezone.utc)
        action = {"failure": "failed", "delay": "delayed", "success": "relayed"}[kind]
        statuses = [
            RecipientStatus(
                address=r.address,
                status=_status_of(r.reply, {"failure": "5.0.0", "delay": "4.0.0", "success": "2.0.0"}[kind]),
                action=action,  # type: ignore[arg-type]
                diagnostic=r.reply or None,
                remote_mta=remote_mta or None,
                orcpt=r.orcpt or None,
                last_attempt=now,
            )
            for r in recipients
        ]
        failed = FailedMessage(
            sender=entry.sender,
            original=content,
            recipients=statuses,
            reporting_mta=self.reporting_mta,
            arrival=datetime.fromtimestamp(entry.arrival, timezone.utc),
            envid=entry.envid or None,
            ret="FULL" if entry.ret == "FULL" else "HDRS",
        )
        dsn = build_dsn(failed, now=now, max_return=self.max_return)
        notice = SpoolEntry(
            sender="",
            recipients=[SpooledRecipient(dsn.rcpt_to, notify=["NEVER"])],
            arrival=time.time(),
            is_dsn=True,
        )
        self.spool.put(notice, self._sign(dsn.data) if self._sign is not None else dsn.data)
        self._count(f"dsn.sent.{kind}")
        log.info("dsn queued: %s", fields(action=action, message=entry.id, to=f"<{dsn.rcpt_to}>", dsn=notice.id))
        self.on_dsn()
