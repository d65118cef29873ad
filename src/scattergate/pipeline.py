"""The gateway pipeline: checks by SMTP phase → findings → decision → verdict → delivery.

Front ends (SMTP now; milter and policy later) translate their wire format into calls on
`Gateway` and its verdicts back into replies. They never deliver: only this module hands an
accepted message to delivery, and only after the decision layer said so.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from scattergate.address import Address
from scattergate.checks import CheckContext, PhaseChecks, RemoteCheck, by_phase
from scattergate.checks.dnsbl import DnsblCheck
from scattergate.checks.limits import RecipientLimit
from scattergate.checks.ratelimit import AuthFailureLimit, RateLimiter
from scattergate.checks.recipients import RecipientCheck, RecipientTable
from scattergate.checks.relay import RelayCheck
from scattergate.checks.scanners import build_scanners
from scattergate.checks.smuggling import check_bare_line_endings
from scattergate.checks.structure import MessageStructure
from scattergate.checks.verify import RecipientVerifier
from scattergate.config import Config, parse_host_port
from scattergate.credentials import Credentials, load_credentials
from scattergate.net.tls import server_context
from scattergate.bounce.notifier import BounceNotifier
from scattergate.bounce.ratelimit import DsnRateLimiter, Rate
from scattergate.checks.backscatter import (
    BackscatterCheck,
    BatvGuard,
    BatvSettings,
    SentRegistry,
    outbound_message_id,
)
from scattergate.checks.senderauth import DkimDmarcCheck, SpfCheck, sender_verification
from scattergate.decision.headers import render_headers, strip_fields, strip_forged_results
from scattergate.delivery.quarantine import Quarantine as QuarantineStore
from scattergate.delivery.scheduler import Scheduler
from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry
from scattergate.net.dns import DnsConfig, Resolver
from scattergate.rewrite import token
from scattergate.rewrite.keys import load_batv_keys, load_or_create_site_secret
from scattergate.decision.policy import Decider
from scattergate.decision.record import DecisionRecorder
from scattergate.delivery import maildir
from scattergate.rewrite.dkim_sign import load_signer
from scattergate.delivery.relay import DownstreamPool, DsnParams, Relay, downstream_tls
from scattergate.model import (
    Accept,
    Envelope,
    Finding,
    Phase,
    Quarantine,
    RcptDsn,
    Reject,
    Reply,
    Session,
    Tempfail,
    Verdict,
    header_date,
)
from scattergate.state.store import StateStore

log = logging.getLogger(__name__)

RCPT_OK = Reply(250, "2.1.5", "OK")
MAIL_OK = Reply(250, "2.1.0", "OK")


class Gateway:
    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.hostname = config.server.hostname or socket.getfqdn()
        self.decider = Decider(config.policy)
        self.recorder = DecisionRecorder(store, flush_interval=config.state.flush_interval)
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in config.receive.trusted_networks]
        self._active: Counter[str] = Counter()
        self._active_total = 0
        self._idle = asyncio.Event()
        # Read here, so a SIGHUP (a new Gateway) picks up a renewed certificate and new users.
        tls = config.tls
        self.tls_context = server_context(tls.cert_file, tls.key_file, tls.min_version) if tls.cert_file else None
        self.credentials: Credentials | None = (
            load_credentials(config.smtp_auth.users_file) if config.smtp_auth.users_file else None
        )
        # Password checks run in threads; bounded, so a guessing flood cannot take every core.
        self._auth_slots = asyncio.Semaphore(2)
        smtp_auth = config.smtp_auth
        self.auth_failures = (
            AuthFailureLimit(store, smtp_auth.failures_per_client, smtp_auth.failures_window)
            if self.credentials is not None and smtp_auth.failures_per_client else None
        )

        delivery = config.delivery
        self.relay: Relay | None = None
        if delivery.relay:
            host, port = parse_host_port(delivery.relay, "delivery.relay")
            pool = DownstreamPool(
                host, port, size=delivery.relay_pool_size, timeout=delivery.relay_timeout,
                local_hostname=self.hostname,
                tls=downstream_tls(delivery.tls, verify=delivery.tls_verify, ca_file=delivery.tls_ca_file,
                                   server_name=delivery.tls_server_name),
            )
            self.relay = Relay(pool)

        # Recipient table: the file if given; with no file and no downstream to ask, only the
        # role addresses every domain must have. With a downstream, it is asked instead.
        table: RecipientTable | None = None
        if config.receive.recipients_file or self.relay is None:
            table = RecipientTable(config.receive.recipients_file or None)
        domains = list(config.receive.domains)
        if not domains and table is not None:
            domains = sorted(table.domains)
        self.domains = [d.lower() for d in (domains or ["localhost"])]

        self.relay_check = RelayCheck(self.domains, outbound_route=self.relay is not None)
        self.checks: dict[Phase, PhaseChecks] = by_phase()
        rcpt = self.checks[Phase.RCPT]
        rcpt.local.append(RecipientLimit(config.server.max_recipients))
        rcpt.local.append(self.relay_check)
        if table is not None:
            rcpt.local.append(RecipientCheck(table, self.relay_check.is_local))
        if self.relay is not None and delivery.verify_recipients:
            verifier = RecipientVerifier(
                self.relay, self.relay_check.is_local,
                positive_ttl=delivery.verify_positive_ttl, negative_ttl=delivery.verify_negative_ttl,
            )
            rcpt.remote.append(RemoteCheck("verify", verifier, delivery.verify_timeout))
        self.checks[Phase.DATA].local.append(check_bare_line_endings)
        self.checks[Phase.DATA].local.append(
            MessageStructure(config.server.max_header_size, config.server.max_mime_depth)
        )
        self.checks[Phase.DATA].remote.extend(build_scanners(config.scan, self.hostname))

        self.resolver = self._setup_auth()
        if config.dnsbl.zones:
            self.resolver = self._setup_dnsbl(self.resolver)
        # Header fields only we may set: removed from mail that arrives from outside with them.
        scanning = any(getattr(config.scan, name).enabled for name in ("spamd", "rspamd", "clamav"))
        self.owned_fields: tuple[bytes, ...] = (b"x-scattergate-",) + (
            (b"x-spam-", b"x-scan-skipped:", b"x-virus-") if scanning else ()
        )
        self.batv: BatvGuard | None = None
        self.registry: SentRegistry | None = None
        if config.backscatter.mode != "off" or config.backscatter.batv_mode != "off":
            self._setup_backscatter(store)
        self.quarantine = QuarantineStore(config.data_dir / "quarantine", store)
        # None when no rate limit is set: then connect and RCPT make no store round trip.
        self.rate = RateLimiter(store, config.rate_limits) if RateLimiter.wanted(config.rate_limits) else None
        self.dkim_signer = load_signer(config.dkim_signing.key_table)  # raises for an unsafe key
        self.spool: Spool | None = None
        self.scheduler: Scheduler | None = None
        if config.spool.enabled and self.relay is not None:
            self.spool, self.scheduler = self._setup_spool(self.relay)

    def _setup_auth(self) -> Resolver | None:
        """Sender authentication: findings for the policy, and proof for the safe-bounce rule."""
        auth = self.config.auth
        if not (auth.spf or auth.dkim):
            return None
        resolver = self._new_resolver()
        if auth.spf:
            spf = SpfCheck(resolver, receiver=self.hostname, budget=auth.spf_budget)
            self.checks[Phase.RCPT].remote.append(RemoteCheck("spf", spf, auth.spf_budget))
        if auth.dkim:
            dkim = DkimDmarcCheck(resolver, dmarc=auth.dmarc)
            self.checks[Phase.DATA].remote.append(RemoteCheck("dkim", dkim, auth.dkim_budget))
        return resolver

    def _new_resolver(self) -> Resolver:
        dns = self.config.dns
        return Resolver(DnsConfig(
            nameservers=tuple(dns.nameservers), port=dns.port, timeout=dns.timeout, lifetime=dns.lifetime,
        ))

    def _setup_dnsbl(self, resolver: Resolver | None) -> Resolver:
        """DNS blocklists at RCPT (docs/backscatter.md), sharing the SPF resolver and its cache."""
        settings = self.config.dnsbl
        resolver = resolver or self._new_resolver()
        budget = min(settings.budget, self.config.server.rcpt_deadline)
        check = DnsblCheck(resolver, settings.zones, mode=settings.mode, budget=budget)
        self.checks[Phase.RCPT].remote.append(RemoteCheck("dnsbl", check, budget))
        return resolver

    def _setup_backscatter(self, store: StateStore) -> None:
        """BATV at RCPT, the sent-message registry, and the end-of-DATA backscatter check."""
        settings = self.config.backscatter
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.site_secret = load_or_create_site_secret(self.config.site_secret_file)
        keyring = load_batv_keys(self.site_secret, settings.batv_keys_file)
        domains = frozenset(d.lower() for d in (settings.batv_domains or self.domains))
        self.batv = BatvGuard(BatvSettings(
            keyring, domains, settings.batv_mode, {k.lower(): v for k, v in settings.batv_modes.items()},
        ))
        self.registry = SentRegistry(store, keep_days=settings.registry_days)
        if settings.mode != "off":
            check = BackscatterCheck(self.registry, self.site_secret)
            self.checks[Phase.DATA].remote.append(RemoteCheck("backscatter", check, 10.0))
        # The mode is the default action for unsolicited automated mail; explicit policy wins.
        action = {"reject": None, "quarantine": "quarantine", "tag": "observe"}.get(settings.mode)
        if action and "backscatter.unsolicited" not in self.config.policy.actions:
            self.decider = Decider(self.config.policy, defaults={
                "backscatter.unsolicited": action, "backscatter.multiple_recipients": action,
            })

    def _setup_spool(self, relay: Relay) -> tuple[Spool, Scheduler]:
        """Store-and-forward: the spool, its scheduler, and the safe-bounce notifier."""
        spool_config, delivery = self.config.spool, self.config.delivery
        spool = Spool(self.config.data_dir / "spool")
        notifier = BounceNotifier(
            spool, self.quarantine,
            DsnRateLimiter(
                per_address=Rate.per_hour(spool_config.dsn_per_address_hour),
                per_domain=Rate.per_hour(spool_config.dsn_per_domain_hour),
                clock=time.monotonic,
            ),
            reporting_mta=self.hostname,
            max_return=spool_config.dsn_max_return,
            count=self.recorder.count,
            sign=self.dkim_signer.sign if self.dkim_signer is not None else None,
        )
        dsn_pool = None
        if spool_config.dsn_route:
            dsn_host, dsn_port = parse_host_port(spool_config.dsn_route, "spool.dsn_route")
            # Same TLS policy as the relay; its certificate must name the DSN route's own host.
            dsn_pool = DownstreamPool(dsn_host, dsn_port, size=2, timeout=delivery.relay_timeout,
                                      local_hostname=self.hostname,
                                      tls=downstream_tls(delivery.tls, verify=delivery.tls_verify,
                                                         ca_file=delivery.tls_ca_file))
        scheduler = Scheduler(
            spool, relay.pool, notifier, spool_config,
            attempt_timeout=delivery.relay_timeout, dsn_pool=dsn_pool, count=self.recorder.count,
        )
        notifier.on_dsn = scheduler.wake  # a new DSN is due for delivery now
        return spool, scheduler

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
        for name, value in render_headers(self.hostname, verdict.findings):
            lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        return b"".join(lines)

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
        helo = "".join(c for c in session.helo if c.isprintable() and c not in "()\\")[:100] or "unknown"
        target = f"\r\n\tfor {envelope.recipients[0].bracketed()}" if len(envelope.recipients) == 1 else ""
        header = (
            f"Received: from {helo} ([{session.client_ip}])\r\n\tby {self.hostname} (scattergate)"
            f" with {protocol} id {envelope.message_id}{target};\r\n\t{header_date()}\r\n"
        )
        return header.encode("utf-8", "surrogateescape")

    async def _deliver(
        self, session: Session, envelope: Envelope, content: bytes, verdict: Verdict, budget: float
    ) -> Verdict:
        if self.resolver is not None:
            content = strip_forged_results(content, self.hostname)
        if not session.trusted:
            content = strip_fields(content, self.owned_fields)
        message = self.added_headers(session, envelope, verdict) + content
        sender = envelope.sender
        if session.trusted and self.batv is not None:
            try:
                sender, message = await self._outbound(envelope, message)
            except OSError as exc:  # the state store (e.g. Redis) is down: its bounces would lack proof
                log.error("cannot remember outbound message: %s", exc)
                return Tempfail(Reply(451, "4.3.0", "Cannot record the message now, try again later"), verdict.findings)
        if session.trusted and self.dkim_signer is not None and self.config.dkim_signing.outbound:
            message = await asyncio.to_thread(self.dkim_signer.sign, message)  # an RSA signature: off the loop
        findings = verdict.findings
        if budget <= 0:
            return Tempfail(Reply(451, "4.4.3", "Out of time, try again later"), findings)
        if isinstance(verdict, Quarantine):
            return await self._hold(envelope, message, verdict, budget)
        if self.spool is not None:
            return await self._spool(session, envelope, sender, message, verdict, budget)
        if self.relay is not None:
            result = await self.relay.send(
                sender, envelope.recipients, message,
                mail_options=_relay_options(envelope.mail_options),
                smtputf8="SMTPUTF8" in envelope.mail_options,
                deadline=min(budget, self.config.delivery.relay_timeout),
                dsn=DsnParams(
                    envelope.ret, envelope.envid,
                    tuple((tuple(sorted(d.notify)) if d.notify else None, d.orcpt) for d in envelope.rcpt_dsn),
                ),
            )
            reply = result.reply
            outcome = Finding("delivery", "relayed" if reply.code < 300 else "refused", str(reply))
            return _verdict_for(reply, findings + (outcome,))
        return await self._write_maildir(self.config.maildir, envelope, message, verdict, budget)

    async def _outbound(self, envelope: Envelope, message: bytes) -> tuple[Address, bytes]:
        """Our users' mail: BATV-sign the envelope sender, carry the token, remember the ID,
        so the genuine bounces for it can prove they are ours."""
        assert self.batv is not None and self.registry is not None
        message_id = outbound_message_id(message)
        if message_id:
            await self.registry.remember(message_id, str(envelope.sender))
            mark = f"{token.HEADER}: {token.make(self.site_secret, message_id)}\r\n".encode()
            message = mark + message
        return self.batv.sign(envelope.sender), message

    async def _spool(
        self, session: Session, envelope: Envelope, sender: Address, message: bytes, verdict: Verdict, budget: float
    ) -> Verdict:
        """Store-and-forward: durable (fsynced) before the 250; the scheduler delivers it."""
        assert self.spool is not None and self.scheduler is not None
        spf_result, dkim_aligned = sender_verification(envelope)
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
            mail_options=_relay_options(envelope.mail_options),
            spf_result=spf_result,
            dkim_aligned=dkim_aligned,
            content_verdict=content_verdict(verdict.findings),
        )
        try:
            async with asyncio.timeout(budget):
                # Group commit; delivery starts as soon as the message is durable.
                await self.scheduler.put(entry, message)
        except TimeoutError:
            return Tempfail(Reply(451, "4.3.0", "Spool write too slow, try again later"), verdict.findings)
        except OSError as exc:
            log.error("spool write failed: %s", exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return Tempfail(Reply(452, "4.3.1", "Insufficient system storage"), verdict.findings)
            return Tempfail(Reply(451, "4.3.0", "Spool write failed, try again later"), verdict.findings)
        self.recorder.count("spool.queued")
        return Accept(Reply(250, "2.0.0", f"Ok: queued as {entry.id}"), verdict.findings)

    async def _hold(self, envelope: Envelope, message: bytes, verdict: Verdict, budget: float) -> Verdict:
        reason = "; ".join(str(f) for f in verdict.findings) or "policy"
        try:
            async with asyncio.timeout(budget):
                item = await asyncio.to_thread(
                    self.quarantine.hold, message, str(envelope.sender), [str(r) for r in envelope.recipients], reason
                )
        except (TimeoutError, OSError) as exc:
            log.error("quarantine write failed: %s", exc)
            return Tempfail(Reply(451, "4.3.0", "Cannot store the message now, try again later"), verdict.findings)
        return Quarantine(Reply(250, "2.0.0", f"Ok: held as {item.id}"), verdict.findings)

    async def _write_maildir(
        self, root: Path, envelope: Envelope, message: bytes, verdict: Verdict, budget: float
    ) -> Verdict:
        try:
            async with asyncio.timeout(budget):
                await asyncio.to_thread(maildir.deliver, root, envelope.recipients, message)
        except TimeoutError:
            # The write may still finish in its thread: at worst a duplicate after the retry.
            return Tempfail(Reply(451, "4.3.0", "Local delivery too slow, try again later"), verdict.findings)
        except OSError as exc:
            log.error("local delivery failed: %s", exc)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return Tempfail(Reply(452, "4.3.1", "Insufficient system storage"), verdict.findings)
            return Tempfail(Reply(451, "4.3.0", "Local delivery failed, try again later"), verdict.findings)
        return Accept(Reply(250, "2.0.0", f"Ok: delivered as {envelope.message_id}"), verdict.findings)


def content_verdict(findings: Sequence[Finding]) -> str:
    """What the content checks judged, for the safe-bounce rule: virus, spam or clean."""
    results = {f.result for f in findings}
    if "virus" in results:
        return "virus"
    if results & {"spam", "reject", "tag"}:
        return "spam"
    return "clean"


def _relay_options(options: Sequence[str]) -> list[str]:
    # Pass on what describes the message; SIZE is recomputed by the client library if needed.
    return [o for o in options if o.split("=", 1)[0] in ("BODY", "SMTPUTF8")]


def _verdict_for(reply: Reply, findings: tuple[Finding, ...]) -> Verdict:
    if reply.code < 300:
        return Accept(reply, findings)
    if reply.code < 500:
        return Tempfail(reply, findings)
    return Reject(reply, findings)
