"""The gateway pipeline: checks by SMTP phase → findings → decision → verdict → delivery.

Front ends (smtp, milter, policy) translate their wire format into calls on `Gateway` and its
verdicts back into replies. They never deliver: only this module hands an accepted message to
delivery, and only after the decision layer said so. What the Gateway runs with (checks per
phase, decider, delivery, outbound marking) is built by assembly.py; what delivery reports is
turned into the client's verdict by decision/outcomes.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from typing import Sequence

from scattergate.address import Address
from scattergate.assembly import GatewayParts, assemble
from scattergate.checks import CheckContext
from scattergate.config import Config
from scattergate.decision.headers import render_headers, strip_fields, strip_forged_results
from scattergate.decision.outcomes import verdict_for
from scattergate.delivery.outcome import DeliveryOutcome
from scattergate.model import (
    Accept,
    Envelope,
    Finding,
    Phase,
    Quarantine,
    RcptDsn,
    Reply,
    Session,
    Verdict,
    header_date,
)
from scattergate.state.store import StateStore

log = logging.getLogger(__name__)

RCPT_OK = Reply(250, "2.1.5", "OK")
MAIL_OK = Reply(250, "2.1.0", "OK")
# Client addresses whose trust a Gateway remembers (cleared when full: a flood of addresses costs
# only the parsing it would have cost anyway).
_TRUSTED_CACHE_SIZE = 4096


def _trace_name(helo: str) -> str:
    """The HELO name as a Received comment may carry it: printable, no comment delimiters."""
    if not (helo.isascii() and helo.isprintable()) or "(" in helo or ")" in helo or "\\" in helo:
        helo = "".join(c for c in helo if c.isprintable() and c not in "()\\")
    return helo[:100] or "unknown"


class Gateway:
    """The phases of an SMTP transaction, as the front ends call them: connect, mail, rcpt,
    decide_data / data, disconnect. What it runs with comes from assembly.py."""

    def __init__(self, config: Config, store: StateStore, parts: GatewayParts | None = None) -> None:
        parts = parts if parts is not None else assemble(config, store)
        self.config = config
        self.parts = parts
        self.hostname = parts.hostname
        self.decider = parts.decider
        self.recorder = parts.recorder
        self.checks = parts.checks
        self.domains = parts.domains
        self.relay_check = parts.relay_check
        self.quarantine = parts.quarantine
        self.delivery = parts.delivery
        self.renderers = parts.renderers
        self.owned_fields = parts.owned_fields
        self.tls_context = parts.tls_context
        self.credentials = parts.credentials
        self.auth_failures = parts.auth_failures
        self.relay = parts.relay
        self.resolver = parts.resolver
        self.batv = parts.batv
        self.registry = parts.registry
        self.outbound = parts.outbound  # marks our users' mail (outbound.py)
        self.site_secret = parts.site_secret
        self.rate = parts.rate
        self.dkim_signer = parts.dkim_signer
        self.spool = parts.spool
        self.scheduler = parts.scheduler
        self._trusted = parts.trusted_networks
        self._trusted_cache: dict[str, bool] = {}
        self._active: Counter[str] = Counter()
        self._active_total = 0
        self._idle = asyncio.Event()
        if self.scheduler is not None:  # its deliveries give way while we serve clients
            self.scheduler.pacer.sessions = lambda: self._active_total
        # Password checks run in threads; bounded, so a guessing flood cannot take every core.
        self._auth_slots = asyncio.Semaphore(2)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.recorder.start()
        if self.scheduler is not None:
            self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.recorder.stop()
        if self.relay is not None:
            await self.relay.pool.close()
        if self.resolver is not None:
            self.resolver.close()

    # -- phases ----------------------------------------------------------------------------

    def is_trusted(self, ip: str) -> bool:
        # Every connection asks, mostly from the same few addresses (behind Postfix: Postfix's
        # clients); parsing the address cost more than the rest of connect. The networks are
        # fixed for this Gateway (a reload builds a new one).
        trusted = self._trusted_cache.get(ip)
        if trusted is None:
            if len(self._trusted_cache) >= _TRUSTED_CACHE_SIZE:
                self._trusted_cache.clear()
            trusted = self._trusted_cache[ip] = self._is_trusted(ip)
        return trusted

    def _is_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._trusted)

    async def authenticate(self, session: Session, user: str, password: bytes) -> bool:
        """SMTP AUTH: one of our users is trusted to relay exactly like a trusted network
        (BATV-signed, registered as outbound). The password is never logged."""
        assert self.credentials is not None
        async with self._auth_slots:
            ok = await asyncio.to_thread(self.credentials.verify, user, password)
        if ok:
            session.trusted, session.auth_user = True, user
            self.recorder.count("auth.success")
            log.info("session %s: client %s authenticated as %s", session.id, session.client_ip, user)
        else:
            self.recorder.count("auth.failed")
            log.warning("session %s: client %s failed to authenticate", session.id, session.client_ip)
            if self.auth_failures is not None:
                await self.auth_failures.failed(session.client_ip)
        return ok

    async def auth_locked_out(self, session: Session) -> bool:
        """Has this client address failed AUTH too often lately (on any gateway sharing state)?"""
        if self.auth_failures is None or not await self.auth_failures.locked_out(session.client_ip):
            return False
        self.recorder.count("auth.locked_out")
        log.warning("session %s: client %s refused AUTH: too many failures lately", session.id, session.client_ip)
        return True

    async def connect(self, session: Session) -> Verdict:
        """A new connection: rate, per-client and global limits. Pair every call with disconnect()."""
        session.trusted = self.is_trusted(session.client_ip)
        # Counted before anything changes here, so a cancellation while the store is asked
        # leaves nothing for disconnect() to undo.
        rate = await self.connection_rate(session)
        self._active[session.client_ip] += 1
        self._active_total += 1
        self.recorder.count("sessions")
        findings: list[Finding] = []
        server = self.config.server
        if self._active_total > server.max_connections:
            findings.append(Finding("connection", "too_many", f"{self._active_total} connections in all"))
        elif self._active[session.client_ip] > server.max_connections_per_client:
            findings.append(Finding("connection", "too_many", f"{self._active[session.client_ip]} from this client"))
        return self.decide_connect(session, findings + rate)

    async def connection_rate(self, session: Session) -> list[Finding]:
        """The connection-rate finding alone (the policy service asks at Postfix's CONNECT)."""
        return await self.rate.at_connect(session) if self.rate is not None else []

    def decide_connect(self, session: Session, findings: list[Finding]) -> Verdict:
        """The verdict on a connection; a refusal is recorded like any decision."""
        verdict = self.decider.decide(findings)
        if not isinstance(verdict, Accept):
            self.recorder.record(session, Phase.CONNECT, "", (), verdict)
        return verdict

    def disconnect(self, session: Session) -> None:
        self._active[session.client_ip] -= 1
        if self._active[session.client_ip] <= 0:
            del self._active[session.client_ip]
        self._active_total -= 1
        if self._active_total == 0:
            self._idle.set()

    @property
    def active_sessions(self) -> int:
        return self._active_total

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no session is open (graceful shutdown); False if some outlived `timeout`."""
        if self._active_total == 0:
            return True
        self._idle.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning("%d sessions still open after %.0f s; closing", self._active_total, timeout)
            return False
        return True

    def mail(
        self, session: Session, sender: Address, options: Sequence[str], *, ret: str = "", envid: str = ""
    ) -> Envelope:
        """MAIL FROM: start a transaction. Sender findings wait for RCPT (reject late, log fully)."""
        session.transactions += 1
        return Envelope(sender=sender, mail_options=tuple(options), ret=ret, envid=envid)

    async def rcpt(
        self, session: Session, envelope: Envelope, recipient: Address, dsn: RcptDsn = RcptDsn()
    ) -> Verdict:
        checks = self.checks[Phase.RCPT]
        batv_findings: list[Finding] = []
        if self.batv is not None:
            recipient, batv_findings = self.batv.inspect(envelope.sender, recipient)
        ctx = CheckContext(session, envelope, recipient)
        # Relay and recipient findings first: when both refuse, theirs is the reply that explains.
        findings = envelope.sender_findings + checks.run_local(ctx) + batv_findings
        verdict = self.decider.decide(findings, RCPT_OK)
        if isinstance(verdict, Accept) and self.rate is not None:
            # After the local checks (a relay attempt costs no round trip), before the remote
            # ones (a client over its rate costs no probe). The message finding is held for the
            # rest of the transaction like a sender finding.
            per_message, per_recipient = await self.rate.at_rcpt(session, envelope)
            envelope.sender_findings.extend(per_message)
            findings += per_message + per_recipient
            verdict = self.decider.decide(findings, RCPT_OK)
        if isinstance(verdict, Accept) and checks.remote:
            ctx.earlier = tuple(findings)
            findings += await checks.run_remote(ctx, self.config.server.rcpt_deadline)
            verdict = self.decider.decide(findings, RCPT_OK)
        if isinstance(verdict, (Accept, Quarantine)):
            envelope.recipients.append(recipient)
            envelope.rcpt_dsn.append(dsn)
            envelope.rcpt_findings.extend(f for f in findings if f not in envelope.rcpt_findings)
        else:
            self.recorder.record(session, Phase.RCPT, str(envelope.sender), (str(recipient),), verdict)
        return verdict

    async def decide_data(self, session: Session, envelope: Envelope, content: bytes) -> Verdict:
        """End of DATA, decision only: content checks within the deadline, no delivery.

        Front ends whose MTA delivers (the milter) use this; `data()` adds our own delivery.
        """
        checks = self.checks[Phase.DATA]
        ctx = CheckContext(session, envelope, content=content)
        findings = envelope.rcpt_findings + checks.run_local(ctx)
        verdict = self.decider.decide(findings)
        if isinstance(verdict, (Accept, Quarantine)) and checks.remote:
            findings += await checks.run_remote(ctx, self.config.server.data_deadline)
            verdict = self.decider.decide(findings)
        return verdict

    def added_headers(self, session: Session, envelope: Envelope, verdict: Verdict) -> bytes:
        """The trace and result headers we prepend to a message we accept."""
        lines = [self.received_header(session, envelope)]
        for name, value in self.result_headers(verdict.findings):
            lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        return b"".join(lines)

    def result_headers(self, findings: Sequence[Finding]) -> list[tuple[str, str]]:
        """The result headers (Authentication-Results, X-Spam-*, ...) the findings call for."""
        return render_headers(self.hostname, findings, self.renderers)

    async def data(self, session: Session, envelope: Envelope, content: bytes) -> Verdict:
        """End of DATA: content checks, then delivery inside the same deadline."""
        started = time.monotonic()
        verdict = await self.decide_data(session, envelope, content)
        if isinstance(verdict, (Accept, Quarantine)):
            remaining = self.config.server.data_deadline - (time.monotonic() - started)
            verdict = await self._deliver(session, envelope, content, verdict, remaining)
        self.record_data(session, envelope, verdict)
        return verdict

    def record_data(self, session: Session, envelope: Envelope, verdict: Verdict) -> None:
        self.recorder.record(
            session, Phase.DATA, str(envelope.sender), [str(r) for r in envelope.recipients], verdict
        )

    # -- delivery --------------------------------------------------------------------------

    def received_header(self, session: Session, envelope: Envelope) -> bytes:
        protocol = ("UTF8" if "SMTPUTF8" in envelope.mail_options else "") + (
            "ESMTP" if session.esmtp else "SMTP"
        ) + ("S" if session.tls else "") + ("A" if session.auth_user else "")  # RFC 3848
        helo = _trace_name(session.helo)
        target = f"\r\n\tfor {envelope.recipients[0].bracketed()}" if len(envelope.recipients) == 1 else ""
        header = (
            f"Received: from {helo} ([{session.client_ip}])\r\n\tby {self.hostname} (scattergate)"
            f" with {protocol} id {envelope.message_id}{target};\r\n\t{header_date()}\r\n"
        )
        return header.encode("utf-8", "surrogateescape")

    async def _deliver(
        self, session: Session, envelope: Envelope, content: bytes, verdict: Verdict, budget: float
    ) -> Verdict:
        """Prepare the message (our headers on, forged ones off, outbound marking), hand it to
        delivery, and let decision/outcomes.py say what the client is told."""
        if self.resolver is not None:
            content = strip_forged_results(content, self.hostname)
        if not session.trusted:
            content = strip_fields(content, self.owned_fields)
        message = self.added_headers(session, envelope, verdict) + content
        sender = envelope.sender
        if session.trusted and self.outbound is not None:
            try:
                sender, message = await self.outbound.mark(envelope.sender, message)
            except OSError as exc:  # the state store (e.g. Redis) is down: its bounces would lack proof
                log.error("session %s: cannot remember outbound message: %s", session.id, exc)
                return verdict_for(DeliveryOutcome("outbound", "failed"), verdict.findings)
        if session.trusted and self.dkim_signer is not None and self.config.dkim_signing.outbound:
            message = await asyncio.to_thread(self.dkim_signer.sign, message)  # an RSA signature: off the loop
        outcome = await self.delivery.deliver(session, envelope, sender, message, verdict, budget)
        return verdict_for(outcome, verdict.findings)
