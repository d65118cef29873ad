"""One typed configuration, loaded from TOML; unknown keys are errors; CLI flags override.

Each TOML table maps to one dataclass below. The loader walks the dataclasses, so a key that
no field names is reported with its dotted path (``server.listen_port``) instead of being
silently ignored, and a value of the wrong type is reported with the type it should have.

Whether the values make sense together, and whether the files and addresses they name can be
used, is checked by config_check.py: this module imports nothing of ours, so every module may
import it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key."""


@dataclass(slots=True)
class ServerConfig:
    listen: str = "127.0.0.1:2525"
    # The name we give in the banner, EHLO reply and Received headers. Empty: the host name.
    hostname: str = ""
    # Worker processes sharing the port (SO_REUSEPORT): "auto" is one per core this process
    # may run on, as nginx's worker_processes auto; one Python process saturates one core.
    workers: int | typing.Literal["auto"] = "auto"
    max_connections: int = 1000
    max_connections_per_client: int = 20
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    # RFC 5321 §4.5.3.2 lets a client wait 5 minutes per command; we wait as long for it —
    # for the whole command line, from the moment we are ready for it: a client dribbling a
    # byte at a time gets no more time than an idle one (421 4.4.2, closed).
    command_timeout: float = 300.0
    # The client's time to send a message, from the DATA command to the final dot:
    # data_timeout seconds plus one second per data_min_rate bytes received (0: data_timeout
    # is the whole limit). A link faster than 8 kbit/s is never cut off; 25 MiB at the minimum
    # rate takes about 7 hours, a client stalling for good is cut off after data_timeout.
    data_timeout: float = 300.0
    data_min_rate: int = 1024
    # Command lines a session may send since its last accepted message (HELO, RSET, NOOP,
    # refused RCPTs...): a client looping without delivering is cut off (421 4.7.0).
    max_commands: int = 1000
    # A session's lifetime in seconds; checked only while waiting for a command, so a message
    # in transfer is never cut short (421 4.4.2).
    max_session_time: float = 3600.0
    # The header section of a message, at most (bytes); larger: 552 5.3.4, never truncated.
    max_header_size: int = 1024 * 1024
    # MIME multipart nesting, at most (levels); deeper: 554 5.6.0. Parsers recurse per level.
    max_mime_depth: int = 100
    # The whole end-of-DATA budget (checks + before-queue relay); well below the client's
    # 10-minute DATA timeout, so we always answer before the client gives up.
    data_deadline: float = 60.0
    # Budget for the checks of one RCPT (e.g. downstream recipient verification).
    rcpt_deadline: float = 20.0
    smtputf8: bool = True

    def process_count(self) -> int:
        """`workers` as a number: "auto" is the cores this process may run on (a container's
        or taskset's share, not the whole machine's)."""
        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return self.workers


@dataclass(slots=True)
class ReceiveConfig:
    # Domains we receive mail for. Empty: the domains of the recipients file, else "localhost".
    domains: list[str] = field(default_factory=list)
    # Valid local addresses, one per line. Empty: postmaster@ and abuse@ each domain.
    recipients_file: str = ""
    # Clients allowed to relay to other domains (our outbound path). Empty by default,
    # loopback included: an unconfigured gateway relays for nobody.
    trusted_networks: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DeliveryConfig:
    # Local Maildir root (the embedded default: <data_dir>/maildir when no relay is set).
    maildir: str = ""
    # Downstream MTA, HOST:PORT; when set, accepted mail is relayed before the 250.
    relay: str = ""
    relay_timeout: float = 30.0
    relay_pool_size: int = 8
    # Probe the downstream with RCPT for each new recipient (cached), like Postfix's
    # reject_unverified_recipient. Only used when a relay is set.
    verify_recipients: bool = True
    verify_timeout: float = 10.0
    verify_positive_ttl: float = 600.0
    verify_negative_ttl: float = 120.0
    # STARTTLS towards the downstream (also the spool's deliveries and DSNs): "none",
    # "opportunistic" (when offered; the certificate is not checked) or "required" (no
    # delivery without TLS: 451 in proxy mode, kept queued in spool mode).
    tls: str = "none"
    # With tls = "required": the certificate must chain to tls_ca_file (else the system CAs)
    # and name tls_server_name (else the relay's host).
    tls_verify: bool = True
    tls_ca_file: str = ""
    tls_server_name: str = ""


@dataclass(slots=True)
class TlsConfig:
    """STARTTLS on our listener. Offered once cert_file and key_file are set."""

    # PEM certificate chain and private key (the key not readable by other users).
    cert_file: str = ""
    key_file: str = ""
    # Refuse every command but EHLO/STARTTLS/NOOP/QUIT before STARTTLS (530 5.7.0).
    required: bool = False
    min_version: str = "TLSv1.2"


@dataclass(slots=True)
class SmtpAuthConfig:
    """SMTP AUTH (PLAIN, LOGIN) for our own users' outbound mail; offered only after STARTTLS."""

    # "user:scrypt$..." lines, mode 0600 (`scattergate passwd USER` prints one). Empty: no AUTH.
    users_file: str = ""
    # Failed AUTH attempts on one connection before it is closed (421 4.7.0).
    max_failures: int = 3
    # Failed AUTH attempts per client address (IPv6: /64) within `failures_window` seconds,
    # counted in the state store (shared through Redis): after that, AUTH from that address
    # gets 454 4.7.0 without a password check until the window ends. 0: no such limit.
    failures_per_client: int = 10
    failures_window: float = 900.0


@dataclass(slots=True)
class DnsSettings:
    # Resolvers to ask; empty: those of /etc/resolv.conf. Tests point this at loopback.
    nameservers: list[str] = field(default_factory=list)
    port: int = 53
    timeout: float = 2.0
    lifetime: float = 5.0


@dataclass(slots=True)
class AuthConfig:
    """Sender authentication: findings for the policy table and for the safe-bounce rule."""

    spf: bool = True
    dkim: bool = True
    dmarc: bool = True
    # Budget for SPF at the first RCPT, and for DKIM+DMARC at end of DATA.
    spf_budget: float = 10.0
    dkim_budget: float = 15.0


@dataclass(slots=True)
class DnsblConfig:
    """DNS blocklists asked at RCPT (docs/backscatter.md). Off until `zones` names one."""

    # Zones to ask, e.g. ["ips.backscatterer.org"]. Empty: no third-party lookups at all.
    zones: list[str] = field(default_factory=list)
    # "safe": refuse only bounces and auto-replies (null sender, postmaster@, mailer-daemon@)
    # from a listed client, and look only those up; "all": any sender.
    mode: str = "safe"
    # Seconds for the lookups of one transaction (all zones at once); past 80 %: temperror.
    budget: float = 3.0


@dataclass(slots=True)
class SpoolConfig:
    """Store-and-forward: accept into a durable spool, deliver later with retries."""

    enabled: bool = False
    # RFC 5321 §4.5.4.1: retry intervals grow from `retry_initial` to `retry_max` (seconds);
    # the message fails permanently after `give_up` seconds (default 5 days).
    retry_initial: float = 300.0
    retry_max: float = 3600.0
    give_up: float = 5 * 24 * 3600.0
    # Where DSNs leave (HOST:PORT, e.g. an outbound smarthost); empty: through delivery.relay.
    dsn_route: str = ""
    # A "delayed" DSN (NOTIFY=DELAY) after this long in the queue, once.
    delay_warning: float = 4 * 3600.0
    # DSNs per recipient address and per recipient domain, per hour.
    dsn_per_address_hour: float = 10.0
    dsn_per_domain_hour: float = 100.0
    # The original content returned in a DSN with RET=FULL, at most (bytes).
    dsn_max_return: int = 256 * 1024
    # Acceptance first (delivery/pacing.py): while a worker's loop is saturated and clients are
    # connected, at most this many deliveries run at once...
    deliveries_when_busy: int = 1
    # ...unless this many deliveries are waiting: then the CPU is shared again.
    busy_backlog: int = 2000


@dataclass(slots=True)
class BackscatterConfig:
    """Refusing the bounces and auto-replies others send us for mail we never sent."""

    # What happens to an automated message (null sender, bounce, auto-reply, challenge) for our
    # users that refers to no mail of ours: reject (550 at end of DATA) | quarantine | tag | off.
    mode: str = "reject"
    # BATV (prvs) keys, "K:secret" lines (Exim-compatible); empty: one key from the site secret.
    batv_keys_file: str = ""
    # Domains whose outbound senders are signed and whose inbound bounces need a valid tag;
    # empty: all our domains. Per address or domain: "enforce" | "score" | "off".
    batv_domains: list[str] = field(default_factory=list)
    batv_mode: str = "enforce"
    batv_modes: dict[str, str] = field(default_factory=dict)
    # The site secret (token header; BATV without a keys file). Created 0600 when missing.
    # Empty: <data_dir>/site.key. Every gateway of a site must share it.
    secret_file: str = ""
    # How long the sent-message registry remembers our outbound Message-IDs.
    registry_days: float = 8.0


@dataclass(slots=True)
class DkimSigningConfig:
    """DKIM signatures on mail we send (docs/configuration.md): our DSNs always once a key
    table is set; our users' outbound mail when `outbound` is on."""

    # OpenDKIM KeyTable format, "NAME DOMAIN:SELECTOR:/path/to/key" per line; key files mode
    # 0600. Empty: nothing is signed.
    key_table: str = ""
    # Also sign mail from trusted clients (receive.trusted_networks, SMTP AUTH) in `serve` mode.
    outbound: bool = False


@dataclass(slots=True)
class StateConfig:
    data_dir: str = "scattergate-data"
    # How often buffered counters and decisions are written to the state store.
    flush_interval: float = 1.0
    # Decisions kept for the dashboard.
    keep_decisions: int = 100_000
    # "sqlite" (embedded, one host) or "redis" (several gateways share state: docs/redis.md).
    backend: str = "sqlite"
    # redis://HOST:PORT/DB, rediss://..., unix:///path or redis+sentinel://HOST:PORT,.../SERVICE
    redis_url: str = ""


@dataclass(slots=True)
class LoggingConfig:
    level: str = "info"
    # Log file, relative to data_dir or absolute; empty: stderr only.
    file: str = "scattergate.log"
    # "text" (one readable line per event) or "json" (one JSON object per line, for log
    # shippers; decision lines carry every field of the decision).
    format: str = "text"
    # Also send every line to syslog: "/dev/log" (the local syslog daemon's socket), another
    # unix socket path, or HOST:PORT (syslog over UDP). Empty: no syslog.
    syslog: str = ""
    syslog_facility: str = "mail"


@dataclass(slots=True)
class PolicyConfig:
    # Per finding key ("check.result") an action: reject | tempfail | accept | quarantine | observe.
    # "observe" logs the finding but lets it decide nothing (like a dry run).
    actions: dict[str, str] = field(default_factory=dict)
    # Per finding key an SMTP reply replacing the default, e.g. "550 5.1.1 No such user".
    replies: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PostfixConfig:
    """The Postfix-side services: `scattergate milter`, `policy`, `srs-socketmap`.

    Listen addresses are 'inet:HOST:PORT' or 'unix:PATH' (Postfix's own notation)."""

    milter_listen: str = "inet:127.0.0.1:8895"
    policy_listen: str = "inet:127.0.0.1:10041"
    socketmap_listen: str = "inet:127.0.0.1:10044"
    # Mode and group of a unix socket: Postfix's daemons (user 'postfix') must be able to
    # connect, after every restart ("" keeps the group of the process).
    socket_mode: int = 0o660
    socket_group: str = ""
    # Milter: values of Postfix's {daemon_name} macro (milter_macro_daemon_name, set per
    # service in master.cf) whose clients are our own users, like SASL clients.
    trusted_daemon_names: list[str] = field(default_factory=lambda: ["ORIGINATING"])
    # Milter: message bytes all connections together may hold in memory; past it a message
    # is refused with 451 4.3.0 rather than buffered (each one is also capped by
    # server.max_message_size and server.max_header_size).
    milter_memory_limit: int = 256 * 1024 * 1024
    # Re-add the recipients of mail from unverified senders with NOTIFY=NEVER (milter).
    never_bounce: bool = True
    # Milter: answer only RCPT and end of message; every other step is negotiated no-reply.
    milter_skip_replies: bool = True
    # A policy request not decided within this many seconds gets `policy_timeout_action`;
    # keep it well below Postfix's smtpd_policy_service_timeout (100 s).
    policy_budget: float = 5.0
    policy_timeout_action: str = "dunno"  # or "defer_if_permit"
    # SRS socketmap: the domain rewritten senders get, and the secrets file (first line signs).
    srs_domain: str = ""
    srs_secrets_file: str = ""


@dataclass(slots=True)
class ScannerConfig:
    """One content scanner, scanned at end of DATA (docs/scanning.md). Off unless enabled."""

    enabled: bool = False
    # "unix:/path/to/socket" or "HOST:PORT".
    address: str = ""
    # Seconds for one scan; must fit inside server.data_deadline (the scanners run concurrently).
    budget: float = 20.0
    # Scanner down, erring, garbled or out of budget: "tempfail" (451 4.7.1) or "accept"
    # (deliver unscanned with an X-Scan-Skipped header).
    on_failure: str = "tempfail"
    # Bytes; what happens above it depends on the scanner (docs/scanning.md).
    max_size: int = 25 * 1024 * 1024


@dataclass(slots=True)
class ClamavConfig(ScannerConfig):
    address: str = "unix:/run/clamav/clamd.ctl"


@dataclass(slots=True)
class SpamdConfig(ScannerConfig):
    address: str = "127.0.0.1:783"
    max_size: int = 512 * 1024
    # Scores at or above tag_score are accepted with X-Spam-Flag; at or above reject_score, 550.
    tag_score: float = 5.0
    reject_score: float = 10.0


@dataclass(slots=True)
class RspamdConfig(ScannerConfig):
    address: str = "127.0.0.1:11333"
    max_size: int = 20 * 1024 * 1024


@dataclass(slots=True)
class ScanConfig:
    clamav: ClamavConfig = field(default_factory=ClamavConfig)
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    rspamd: RspamdConfig = field(default_factory=RspamdConfig)


@dataclass(slots=True)
class RateLimits:
    """Events per client (or sender domain) per `rate_limits.window`; 0: no limit."""

    # New connections from one client address (IPv6: one /64). Over it: 421 4.7.0, closed.
    connections_per_client: int = 0
    # Mail transactions (counted at their first RCPT) from one client address. Over: 450 4.7.1.
    messages_per_client: int = 0
    # Recipients (RCPTs) for one envelope-sender domain, whatever the client. Over: 450 4.7.1.
    recipients_per_sender_domain: int = 0


@dataclass(slots=True)
class RateLimitConfig:
    """Rate limits counted in the state store: all gateways on one Redis share them
    (docs/configuration.md, checks/ratelimit.py). Off unless a limit is set."""

    # Seconds; a counter's window starts at its first event (Postfix's anvil_rate_time_unit).
    window: float = 60.0
    connections_per_client: int = 0
    messages_per_client: int = 0
    recipients_per_sender_domain: int = 0
    # Our own clients (receive.trusted_networks; SASL-authenticated ones in milter/policy
    # mode) are counted apart against these; all 0 (the default): they are exempt.
    trusted: RateLimits = field(default_factory=RateLimits)
    # Seconds one counting round trip may take; slower or failing (store down), the limits are
    # skipped for that event and for the next second (finding ratelimit.unavailable).
    budget: float = 0.5


@dataclass(slots=True)
class HttpConfig:
    """The HTTP listener: /metrics and the dashboard (docs/operations.md)."""

    # HOST:PORT; "" disables it. Off loopback, a token is required (no anonymous dashboard).
    listen: str = "127.0.0.1:8025"
    # The bearer token for the dashboard and /metrics, in a file of mode 0600.
    token_file: str = ""


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    receive: ReceiveConfig = field(default_factory=ReceiveConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    state: StateConfig = field(default_factory=StateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    postfix: PostfixConfig = field(default_factory=PostfixConfig)
    dns: DnsSettings = field(default_factory=DnsSettings)
    auth: AuthConfig = field(default_factory=AuthConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    backscatter: BackscatterConfig = field(default_factory=BackscatterConfig)
    dnsbl: DnsblConfig = field(default_factory=DnsblConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    smtp_auth: SmtpAuthConfig = field(default_factory=SmtpAuthConfig)
    dkim_signing: DkimSigningConfig = field(default_factory=DkimSigningConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.state.data_dir)

    @property
    def site_secret_file(self) -> Path:
        """The site secret every service of the site shares (serve, milter, policy, socketmap)."""
        return Path(self.backscatter.secret_file) if self.backscatter.secret_file else self.data_dir / "site.key"

    @property
    def maildir(self) -> Path:
        return Path(self.delivery.maildir) if self.delivery.maildir else self.data_dir / "maildir"


def parse_host_port(text: str, key: str = "address") -> tuple[str, int]:
    """'127.0.0.1:25', '[::1]:25', 'localhost:25' → (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def load(path: str | Path | None) -> Config:
    """Load a TOML file into a Config (defaults when path is None)."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    return typing.cast(Config, _build(Config, raw, ""))


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown configuration key: {prefix}{unknown[0]}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, key + ".")
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return {str(k): _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        # A number or a keyword (`workers = "auto"`); no optional fields: defaults instead.
        members = typing.get_args(hint)
        words = [a for m in members if typing.get_origin(m) is typing.Literal for a in typing.get_args(m)]
        others = [m for m in members if typing.get_origin(m) is not typing.Literal]
        if not words or len(others) != 1:
            raise ConfigError(f"{key}: unsupported type")
        if isinstance(value, str):
            if value not in words:
                raise ConfigError(f"{key}: expected {' or '.join(map(repr, words))} or a number, got {value!r}")
            return value
        return _coerce(others[0], value, key)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint!r}")


def to_toml(config: Config) -> str:
    """The effective configuration as TOML (what `scattergate check-config` prints)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{value(str(k))} = {value(x)}" for k, x in v.items()) + " }"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    def table(name: str, obj: Any) -> None:
        simple = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
                  if not dataclasses.is_dataclass(getattr(obj, f.name))]
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value(v)}" for key, v in simple)
        lines.append("")
        for f in dataclasses.fields(obj):
            child = getattr(obj, f.name)
            if dataclasses.is_dataclass(child):
                table(f"{name}.{f.name}", child)

    for f in dataclasses.fields(config):
        table(f.name, getattr(config, f.name))
    return "\n".join(lines)
