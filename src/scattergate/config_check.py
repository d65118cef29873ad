"""Is this configuration one we can run? Checked before anything starts.

`validate(config)` checks values whose type is right (config.py saw to that) but whose content
is not: ranges, modes, addresses, and the TLS and AUTH files the TLS layer loads anyway.
`preflight(config, command)` opens what the configuration names, like `postfix check`:
secret files (private?), the recipients file, the HTTP token, the listen addresses (can we
bind them?). `check-config` and every service run both, so a problem is one line naming the
setting and the file or address, never a traceback at start-up.

Validation lives here, not in config.py, because it needs the checks' own vocabularies
(policy actions, scanner settings, DNSBL modes) and config.py must import nothing of ours.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path
from typing import Callable

from scattergate.checks.dnsbl import MODES, valid_zone
from scattergate.checks.scanners import validate_scan
from scattergate.config import Config, ConfigError, parse_host_port
from scattergate.credentials import CredentialsError, load_credentials
from scattergate.decision.policy import validate_policy
from scattergate.logsetup import validate as validate_logging
from scattergate.net import tls
from scattergate.rewrite.dkim_sign import load_signer
from scattergate.rewrite.keys import SecretFileError, load_batv_keyring, load_srs_secrets, read_secret_file
from scattergate.web.auth import read_token


def validate(config: Config) -> None:
    """Check values whose type is right but whose content is not; raise ConfigError."""
    parse_host_port(config.server.listen, "server.listen")
    if config.delivery.relay:
        parse_host_port(config.delivery.relay, "delivery.relay")
    for net in config.receive.trusted_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"receive.trusted_networks: not a network: {net!r}") from None
    positive = {
        "server.workers": config.server.process_count(),
        "server.max_connections": config.server.max_connections,
        "server.max_connections_per_client": config.server.max_connections_per_client,
        "server.max_recipients": config.server.max_recipients,
        "server.max_message_size": config.server.max_message_size,
        "server.data_deadline": config.server.data_deadline,
        "server.rcpt_deadline": config.server.rcpt_deadline,
        "server.command_timeout": config.server.command_timeout,
        "server.data_timeout": config.server.data_timeout,
        "server.max_commands": config.server.max_commands,
        "server.max_session_time": config.server.max_session_time,
        "server.max_header_size": config.server.max_header_size,
        "server.max_mime_depth": config.server.max_mime_depth,
        "delivery.relay_timeout": config.delivery.relay_timeout,
        "delivery.relay_pool_size": config.delivery.relay_pool_size,
        "delivery.verify_timeout": config.delivery.verify_timeout,
        "dns.timeout": config.dns.timeout,
        "dns.lifetime": config.dns.lifetime,
        "auth.spf_budget": config.auth.spf_budget,
        "auth.dkim_budget": config.auth.dkim_budget,
        "spool.retry_initial": config.spool.retry_initial,
        "spool.retry_max": config.spool.retry_max,
        "spool.give_up": config.spool.give_up,
        "spool.deliveries_when_busy": config.spool.deliveries_when_busy,
        "spool.busy_backlog": config.spool.busy_backlog,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, not {value}")
    if config.postfix.policy_budget <= 0:
        raise ConfigError(f"postfix.policy_budget must be positive, not {config.postfix.policy_budget}")
    if config.postfix.policy_timeout_action not in ("dunno", "defer_if_permit"):
        raise ConfigError("postfix.policy_timeout_action: dunno or defer_if_permit, "
                          f"not {config.postfix.policy_timeout_action!r}")
    if config.server.data_min_rate < 0:
        raise ConfigError(f"server.data_min_rate must be 0 (no extension) or positive, not {config.server.data_min_rate}")
    if config.server.data_deadline >= 600:
        raise ConfigError("server.data_deadline must stay below the client's 600 s DATA timeout")
    if config.backscatter.mode not in ("reject", "quarantine", "tag", "off"):
        raise ConfigError(f"backscatter.mode: unknown mode {config.backscatter.mode!r} (reject, quarantine, tag, off)")
    for key, mode in {"": config.backscatter.batv_mode, **config.backscatter.batv_modes}.items():
        if mode not in ("enforce", "score", "off"):
            name = f"backscatter.batv_modes.{key}" if key else "backscatter.batv_mode"
            raise ConfigError(f"{name}: unknown mode {mode!r} (enforce, score, off)")
    _validate_dnsbl(config)
    if config.spool.dsn_route:
        parse_host_port(config.spool.dsn_route, "spool.dsn_route")
    if config.state.backend not in ("sqlite", "redis"):
        raise ConfigError(f"state.backend: unknown backend {config.state.backend!r} (sqlite, redis)")
    if config.state.backend == "redis" and not config.state.redis_url.startswith(
        ("redis://", "rediss://", "unix://", "redis+sentinel://")
    ):
        raise ConfigError("state.redis_url: backend redis needs redis://, rediss://, unix:// or redis+sentinel://")
    if config.spool.enabled and not config.delivery.relay:
        raise ConfigError("spool.enabled needs delivery.relay: the spool delivers to a downstream")
    for server in config.dns.nameservers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ConfigError(f"dns.nameservers: not an IP address: {server!r}") from None
    if not 0 < config.dns.port < 65536:
        raise ConfigError(f"dns.port out of range: {config.dns.port}")
    if config.logging.format not in ("text", "json"):
        raise ConfigError(f"logging.format: expected text or json, got {config.logging.format!r}")
    if config.http.listen:
        http_host, _ = parse_host_port(config.http.listen, "http.listen")
        if not config.http.token_file and not _is_loopback(http_host):
            raise ConfigError(f"http.listen: {config.http.listen} is not loopback: set http.token_file")
    validate_logging(config)
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"logging.level: unknown level {config.logging.level!r}")
    validate_policy(config.policy)
    validate_scan(config.scan, config.server.data_deadline)
    _validate_rate_limits(config)
    _validate_tls(config)

def _validate_dnsbl(config: Config) -> None:
    if config.dnsbl.mode not in MODES:
        raise ConfigError(f"dnsbl.mode: unknown mode {config.dnsbl.mode!r} (safe, all)")
    if config.dnsbl.budget <= 0:
        raise ConfigError(f"dnsbl.budget must be positive, not {config.dnsbl.budget}")
    for zone in config.dnsbl.zones:
        if not valid_zone(zone):
            raise ConfigError(f"dnsbl.zones: not a DNS zone: {zone!r}")


def _validate_rate_limits(config: Config) -> None:
    limits = config.rate_limits
    if limits.window <= 0 or limits.budget <= 0:
        raise ConfigError("rate_limits.window and rate_limits.budget must be positive")
    for prefix, values in (("rate_limits", limits), ("rate_limits.trusted", limits.trusted)):
        for name in ("connections_per_client", "messages_per_client", "recipients_per_sender_domain"):
            if getattr(values, name) < 0:
                raise ConfigError(f"{prefix}.{name} must be 0 (no limit) or positive")


def _validate_tls(config: Config) -> None:
    """TLS and AUTH settings; loads the files, so a bad certificate stops the start."""
    if config.delivery.tls not in ("none", "opportunistic", "required"):
        raise ConfigError(f"delivery.tls: {config.delivery.tls!r} is not none, opportunistic or required")
    if config.delivery.tls != "none":
        tls.checked_client_context(verify=config.delivery.tls_verify, ca_file=config.delivery.tls_ca_file)
    settings = config.tls
    if settings.min_version not in tls.VERSIONS:
        raise ConfigError(f"tls.min_version: {settings.min_version!r} is not one of {', '.join(tls.VERSIONS)}")
    if settings.cert_file or settings.key_file or settings.required:
        tls.server_context(settings.cert_file, settings.key_file, settings.min_version)
    if config.smtp_auth.max_failures <= 0:
        raise ConfigError(f"smtp_auth.max_failures must be positive, not {config.smtp_auth.max_failures}")
    if config.smtp_auth.failures_per_client < 0 or config.smtp_auth.failures_window <= 0:
        raise ConfigError("smtp_auth.failures_per_client must be >= 0 and failures_window positive")
    if config.smtp_auth.users_file:
        if not settings.cert_file:
            raise ConfigError("smtp_auth.users_file needs tls.cert_file: AUTH is offered only over TLS")
        try:
            load_credentials(config.smtp_auth.users_file)
        except CredentialsError as exc:
            raise ConfigError(f"smtp_auth.users_file: {exc}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


# -- preflight: open what the configuration names ----------------------------------------------

class StartError(Exception):
    """The configuration is valid, but the service cannot start now (its address is in use).
    The message names the setting; `scattergate` exits 1 (2 is for configuration errors)."""


# The listen setting of each service (`check-config` checks what `serve` would run with).
LISTEN_SETTINGS = {
    "serve": ("server.listen", "http.listen"),
    "check-config": ("server.listen", "http.listen"),
    "milter": ("postfix.milter_listen", "http.listen"),
    "policy": ("postfix.policy_listen", "http.listen"),
    "srs-socketmap": ("postfix.socketmap_listen",),
}


def preflight(config: Config, command: str = "serve", *, probe_listen: bool = True) -> list[str]:
    """Open every file the configuration names and try every address `command` would listen
    on, as the service will at start-up. Raise ConfigError naming the setting and the file or
    address for the first that cannot work; return warnings (an address already in use: the
    running gateway may hold it)."""
    _check_data_dir(config)
    _check_secrets(config)
    _check_readable("receive.recipients_file", config.receive.recipients_file)
    load_signer(config.dkim_signing.key_table)  # DKIM key files: private, readable, a key each
    if config.http.listen and config.http.token_file:
        read_token(config.http.token_file)  # raises ConfigError naming http.token_file
    warnings: list[str] = []
    if probe_listen:
        for setting in LISTEN_SETTINGS.get(command, ()):
            section, _, key = setting.partition(".")
            listen = getattr(getattr(config, section), key)
            if listen:
                warning = probe_listen_address(setting, listen)
                if warning:
                    warnings.append(warning)
    return warnings


def _check_data_dir(config: Config) -> None:
    path = config.data_dir
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        raise ConfigError(f"state.data_dir: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"state.data_dir: {path} {what}")


def _check_secrets(config: Config) -> None:
    """Secret files must be private (mode 0600 or stricter) and hold a secret."""
    backscatter = config.backscatter
    if backscatter.mode != "off" or backscatter.batv_mode != "off":
        site_key = str(config.site_secret_file)
        setting = "backscatter.secret_file"
        if os.path.exists(site_key):
            _load(setting, read_secret_file, site_key)
        elif backscatter.secret_file and not os.access(Path(site_key).parent, os.W_OK | os.X_OK):
            # Created on first start: its directory must let us.
            raise ConfigError(f"{setting}: {site_key} does not exist and its directory is not writable")
        if backscatter.batv_keys_file:
            _load("backscatter.batv_keys_file", load_batv_keyring, backscatter.batv_keys_file)
    if config.postfix.srs_secrets_file:
        _load("postfix.srs_secrets_file", load_srs_secrets, config.postfix.srs_secrets_file)


def _load(setting: str, loader: Callable[[str], object], path: str) -> None:
    try:
        loader(path)
    except SecretFileError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _check_readable(setting: str, path: str) -> None:
    if not path:
        return
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except IsADirectoryError:
        raise ConfigError(f"{setting}: {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def probe_listen_address(setting: str, listen: str) -> str | None:
    """Can we listen on `listen` ('HOST:PORT', 'inet:HOST:PORT' or 'unix:PATH')? Binds a
    throwaway socket (never listens, so nothing can connect to it). Raises ConfigError; returns
    a warning when the address is in use (by a running gateway, perhaps)."""
    if listen.startswith("unix:"):
        path = Path(listen[5:])
        if not listen[5:]:
            raise ConfigError(f"{setting}: expected unix:PATH, got {listen!r}")
        # A missing directory is created at start: the nearest one that exists must let us.
        existing = next((p for p in path.parents if p.exists()), Path("/"))
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"{setting}: cannot create the socket {path}: {existing} is not a writable directory")
        return None
    host, port = parse_host_port(listen.removeprefix("inet:"), setting)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"{setting}: cannot resolve {host!r} in {listen}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{setting}: {listen} is in use now (by a running scattergate?)"
            raise ConfigError(f"{setting}: cannot listen on {listen}: {listen_error(exc)}") from None
    return None


def listen_error(exc: OSError) -> str:
    """Why a bind failed, in words that say what to change."""
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no interface of this host has that address"
    if exc.errno == errno.EACCES:
        return "permission denied (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)  # asyncio's own wording repeats the address and the errno
