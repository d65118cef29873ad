"""The composition root: everything a Gateway works with, built from the configuration.

Which checks run in which SMTP phase (the checks-per-phase table), the decider and its
defaults, the recipient table, the downstream pool, the spool and its scheduler, outbound
marking, the header renderers: all chosen here, from config, and handed to the Gateway
(pipeline.py), which only runs the phases. Nothing registers itself by being imported, and
nothing here decides anything about a message. What watches the gateway from outside (the
metrics) is handed to `assemble()` too: the recorder is built with it as its observer and the
remote checks are built timed, so nobody patches a gateway after it is built.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from scattergate.bounce.notifier import BounceNotifier
from scattergate.bounce.dsn_rate import DsnRateLimiter, Rate
from scattergate.checks import PhaseChecks, RemoteCheck, by_phase
from scattergate.checks import clamav, rspamd, spamd
from scattergate.checks.backscatter import BackscatterCheck, BatvGuard, backscatter_header
from scattergate.checks.dnsbl import DnsblCheck
from scattergate.checks.limits import RecipientLimit
from scattergate.checks.ratelimit import AuthFailureLimit, RateLimiter
from scattergate.checks.recipients import RecipientCheck, RecipientTable
from scattergate.checks.relay import RelayCheck
from scattergate.checks.scanners import render_scan_headers, scanner_check
from scattergate.checks.senderauth import DkimDmarcCheck, SpfCheck
from scattergate.checks.smuggling import check_bare_line_endings
from scattergate.checks.srs import SrsRecipientCheck
from scattergate.checks.structure import MessageStructure
from scattergate.checks.verify import RecipientVerifier
from scattergate.config import Config, ScanConfig, parse_host_port
from scattergate.credentials import Credentials, load_credentials
from scattergate.decision.headers import HeaderRenderer, authentication_results
from scattergate.decision.policy import Decider
from scattergate.decision.record import DecisionRecorder
from scattergate.delivery.dispatch import Delivery
from scattergate.delivery.quarantine import Quarantine as QuarantineStore
from scattergate.delivery.relay import DownstreamPool, Relay, downstream_tls
from scattergate.delivery.scheduler import Scheduler
from scattergate.delivery.spool import Spool
from scattergate.model import Phase
from scattergate.net.dns import DnsConfig, Resolver
from scattergate.net.tls import server_context
from scattergate.outbound import BatvSettings, OutboundMarker, SentRegistry
from scattergate.rewrite.dkim_sign import DkimSigner, load_signer
from scattergate.rewrite.keys import Secret, load_site_keys, load_srs_secrets
from scattergate.state.store import StateStore

if TYPE_CHECKING:  # imported by web/service.py only: prometheus-client must load after its set-up
    from scattergate.web.metrics import Metrics

# The result headers on accepted mail, in this order: Authentication-Results, the scanners',
# then what the backscatter check saw.
RENDERERS: tuple[HeaderRenderer, ...] = (authentication_results, render_scan_headers, backscatter_header)


@dataclass(slots=True)
class GatewayParts:
    """What a Gateway runs with. Tests may build one by hand to run the phases on chosen checks."""

    hostname: str
    decider: Decider
    recorder: DecisionRecorder
    checks: dict[Phase, PhaseChecks]
    domains: list[str]
    relay_check: RelayCheck
    quarantine: QuarantineStore
    delivery: Delivery
    trusted_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    renderers: tuple[HeaderRenderer, ...] = RENDERERS
    # Header fields only we may set: removed from mail that arrives from outside with them.
    owned_fields: tuple[bytes, ...] = (b"x-scattergate-",)
    tls_context: ssl.SSLContext | None = None
    credentials: Credentials | None = None
    auth_failures: AuthFailureLimit | None = None
    relay: Relay | None = None
    resolver: Resolver | None = None
    batv: BatvGuard | None = None
    registry: SentRegistry | None = None
    outbound: OutboundMarker | None = None
    site_secret: Secret | None = None
    rate: RateLimiter | None = None
    dkim_signer: DkimSigner | None = None
    spool: Spool | None = None
    scheduler: Scheduler | None = None
    # The metrics this gateway feeds (see assemble()), for the HTTP listener to serve.
    metrics: Metrics | None = None


def assemble(config: Config, store: StateStore, metrics: Metrics | None = None, *,
             behind_postfix: bool = False) -> GatewayParts:
    """Build every part from `config`. Reads the files it names (certificate, users, keys,
    recipients), so a SIGHUP that assembles anew picks up their new contents.

    `behind_postfix` is for the milter and policy services, where Postfix holds the SMTP
    dialogue and has already checked relaying and recipients (frontends/postfix_side.py).

    With `metrics`, the decision recorder reports to it and every remote check is timed by it;
    a SIGHUP passes the running gateway's metrics, so the counts go on where they were."""
    hostname = config.server.hostname or socket.getfqdn()
    recorder = DecisionRecorder(store, flush_interval=config.state.flush_interval,
                                observers=(metrics,) if metrics is not None else ())
    tls = config.tls
    smtp_auth = config.smtp_auth
    credentials = load_credentials(smtp_auth.users_file) if smtp_auth.users_file else None
    auth_failures = (
        AuthFailureLimit(store, smtp_auth.failures_per_client, smtp_auth.failures_window)
        if credentials is not None and smtp_auth.failures_per_client else None
    )
    relay = _relay(config, hostname)

    # Recipient table: the file if given; with no file and no downstream to ask, only the
    # role addresses every domain must have. With a downstream, it is asked instead.
    table: RecipientTable | None = None
    if config.receive.recipients_file or relay is None:
        table = RecipientTable(config.receive.recipients_file or None)
    domains = list(config.receive.domains)
    if not domains and table is not None:
        domains = sorted(table.domains)
    domains = [d.lower() for d in (domains or ["localhost"])]

    relay_check = RelayCheck(domains, outbound_route=relay is not None)
    checks = by_phase()
    rcpt, data = checks[Phase.RCPT], checks[Phase.DATA]
    rcpt.local.append(RecipientLimit(config.server.max_recipients))
    # Behind Postfix, relay control and recipient validation are Postfix's: our relay check
    # would refuse what its relay restrictions allowed, and our table runs only if configured.
    if not behind_postfix:
        rcpt.local.append(relay_check)
    if table is not None and (config.receive.recipients_file or not behind_postfix):
        rcpt.local.append(RecipientCheck(table, relay_check.is_local))
    postfix = config.postfix
    if behind_postfix and postfix.srs_domain and postfix.srs_secrets_file:
        rcpt.local.append(SrsRecipientCheck(postfix.srs_domain, load_srs_secrets(postfix.srs_secrets_file)))
    delivery = config.delivery
    if relay is not None and delivery.verify_recipients:
        verifier = RecipientVerifier(
            relay, relay_check.is_local,
            positive_ttl=delivery.verify_positive_ttl, negative_ttl=delivery.verify_negative_ttl,
        )
        rcpt.remote.append(RemoteCheck("verify", verifier, delivery.verify_timeout))
    data.local.append(check_bare_line_endings)
    data.local.append(MessageStructure(config.server.max_header_size, config.server.max_mime_depth))
    data.remote.extend(build_scanners(config.scan, hostname))

    resolver = _sender_auth(config, checks, hostname)
    if config.dnsbl.zones:
        resolver = _dnsbl(config, checks, resolver)
    scanning = any(getattr(config.scan, name).enabled for name in ("spamd", "rspamd", "clamav"))
    owned_fields = (b"x-scattergate-",) + ((b"x-spam-", b"x-scan-skipped:", b"x-virus-") if scanning else ())

    quarantine = QuarantineStore(config.data_dir / "quarantine", store)
    dkim_signer = load_signer(config.dkim_signing.key_table)  # raises for an unsafe key
    spool, scheduler = _spool(config, relay, quarantine, recorder, hostname, dkim_signer) if (
        config.spool.enabled and relay is not None) else (None, None)
    parts = GatewayParts(
        hostname=hostname,
        decider=Decider(config.policy),
        recorder=recorder,
        checks=checks,
        domains=domains,
        relay_check=relay_check,
        quarantine=quarantine,
        delivery=Delivery(relay=relay, scheduler=scheduler, quarantine=quarantine, maildir_root=config.maildir,
                          relay_timeout=delivery.relay_timeout, count=recorder.count),
        trusted_networks=[ipaddress.ip_network(n, strict=False) for n in config.receive.trusted_networks],
        owned_fields=owned_fields,
        # Read here, so a SIGHUP (a new Gateway) picks up a renewed certificate and new users.
        tls_context=server_context(tls.cert_file, tls.key_file, tls.min_version) if tls.cert_file else None,
        credentials=credentials,
        auth_failures=auth_failures,
        relay=relay,
        resolver=resolver,
        # None when no rate limit is set: then connect and RCPT make no store round trip.
        rate=RateLimiter(store, config.rate_limits) if RateLimiter.wanted(config.rate_limits) else None,
        spool=spool,
        scheduler=scheduler,
        dkim_signer=dkim_signer,
    )
    if config.backscatter.mode != "off" or config.backscatter.batv_mode != "off":
        _backscatter(config, store, parts)
    if metrics is not None:
        parts.metrics = metrics
        parts.checks = instrumented(parts.checks, metrics.instrument)
    return parts


def instrumented(checks: dict[Phase, PhaseChecks],
                 instrument: Callable[[RemoteCheck], RemoteCheck]) -> dict[Phase, PhaseChecks]:
    """A new checks-per-phase table whose remote checks are `instrument`ed (e.g. timed); the
    local ones are the same (they take microseconds). `checks` itself is left as it was."""
    return {phase: PhaseChecks(list(table.local), [instrument(check) for check in table.remote])
            for phase, table in checks.items()}


def build_scanners(config: ScanConfig, hostname: str) -> list[RemoteCheck]:
    """The enabled content scanners as remote checks of the DATA phase (run concurrently)."""
    checks: list[RemoteCheck] = []
    if config.clamav.enabled:
        checks.append(scanner_check("clamav", clamav.ClamdScanner(config.clamav).scan, config.clamav))
    if config.spamd.enabled:
        checks.append(scanner_check("spamd", spamd.SpamdScanner(config.spamd, hostname).scan, config.spamd))
    if config.rspamd.enabled:
        checks.append(scanner_check("rspamd", rspamd.RspamdScanner(config.rspamd, hostname).scan, config.rspamd))
    return checks


def _relay(config: Config, hostname: str) -> Relay | None:
    delivery = config.delivery
    if not delivery.relay:
        return None
    host, port = parse_host_port(delivery.relay, "delivery.relay")
    return Relay(DownstreamPool(
        host, port, size=delivery.relay_pool_size, timeout=delivery.relay_timeout, local_hostname=hostname,
        tls=downstream_tls(delivery.tls, verify=delivery.tls_verify, ca_file=delivery.tls_ca_file,
                           server_name=delivery.tls_server_name),
    ))


def _resolver(config: Config) -> Resolver:
    dns = config.dns
    return Resolver(DnsConfig(nameservers=tuple(dns.nameservers), port=dns.port, timeout=dns.timeout,
                              lifetime=dns.lifetime))


def _sender_auth(config: Config, checks: dict[Phase, PhaseChecks], hostname: str) -> Resolver | None:
    """Sender authentication: findings for the policy, and proof for the safe-bounce rule."""
    auth = config.auth
    if not (auth.spf or auth.dkim):
        return None
    resolver = _resolver(config)
    if auth.spf:
        spf = SpfCheck(resolver, receiver=hostname, budget=auth.spf_budget)
        checks[Phase.RCPT].remote.append(RemoteCheck("spf", spf, auth.spf_budget))
    if auth.dkim:
        dkim = DkimDmarcCheck(resolver, dmarc=auth.dmarc)
        checks[Phase.DATA].remote.append(RemoteCheck("dkim", dkim, auth.dkim_budget))
    return resolver


def _dnsbl(config: Config, checks: dict[Phase, PhaseChecks], resolver: Resolver | None) -> Resolver:
    """DNS blocklists at RCPT (docs/backscatter.md), sharing the SPF resolver and its cache."""
    settings = config.dnsbl
    resolver = resolver or _resolver(config)
    budget = min(settings.budget, config.server.rcpt_deadline)
    check = DnsblCheck(resolver, settings.zones, mode=settings.mode, budget=budget)
    checks[Phase.RCPT].remote.append(RemoteCheck("dnsbl", check, budget))
    return resolver


def _backscatter(config: Config, store: StateStore, parts: GatewayParts) -> None:
    """BATV at RCPT, outbound marking with the sent-message registry, the end-of-DATA check."""
    settings = config.backscatter
    site_secret, keyring = load_site_keys(config)
    domains = frozenset(d.lower() for d in (settings.batv_domains or parts.domains))
    batv_settings = BatvSettings(
        keyring, domains, settings.batv_mode, {k.lower(): v for k, v in settings.batv_modes.items()},
    )
    parts.site_secret = site_secret
    parts.batv = BatvGuard(batv_settings)
    parts.registry = SentRegistry(store, keep_days=settings.registry_days)
    parts.outbound = OutboundMarker(batv_settings, parts.registry, site_secret)
    if settings.mode != "off":
        check = BackscatterCheck(parts.registry, site_secret)
        parts.checks[Phase.DATA].remote.append(RemoteCheck("backscatter", check, 10.0))
    # The mode is the default action for unsolicited automated mail; explicit policy wins.
    action = {"reject": None, "quarantine": "quarantine", "tag": "observe"}.get(settings.mode)
    if action and "backscatter.unsolicited" not in config.policy.actions:
        parts.decider = Decider(config.policy, defaults={
            "backscatter.unsolicited": action, "backscatter.multiple_recipients": action,
        })


def _spool(config: Config, relay: Relay, quarantine: QuarantineStore, recorder: DecisionRecorder,
           hostname: str, dkim_signer: DkimSigner | None) -> tuple[Spool, Scheduler]:
    """Store-and-forward: the spool, its scheduler, and the safe-bounce notifier."""
    spool_config, delivery = config.spool, config.delivery
    spool = Spool(config.data_dir / "spool")
    notifier = BounceNotifier(
        spool, quarantine,
        DsnRateLimiter(
            per_address=Rate.per_hour(spool_config.dsn_per_address_hour),
            per_domain=Rate.per_hour(spool_config.dsn_per_domain_hour),
            clock=time.monotonic,
        ),
        reporting_mta=hostname,
        max_return=spool_config.dsn_max_return,
        count=recorder.count,
        sign=dkim_signer.sign if dkim_signer is not None else None,
    )
    dsn_pool = None
    if spool_config.dsn_route:
        dsn_host, dsn_port = parse_host_port(spool_config.dsn_route, "spool.dsn_route")
        # Same TLS policy as the relay; its certificate must name the DSN route's own host.
        dsn_pool = DownstreamPool(dsn_host, dsn_port, size=2, timeout=delivery.relay_timeout,
                                  local_hostname=hostname,
                                  tls=downstream_tls(delivery.tls, verify=delivery.tls_verify,
                                                     ca_file=delivery.tls_ca_file))
    scheduler = Scheduler(
        spool, relay.pool, notifier, spool_config,
        attempt_timeout=delivery.relay_timeout, dsn_pool=dsn_pool, count=recorder.count,
    )
    notifier.on_dsn = scheduler.wake  # a new DSN is due for delivery now
    return spool, scheduler
