"""Open the state store the configuration names: SQLite (embedded default) or Redis.

`redis_url` forms (docs/redis.md):
- `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS), `unix:///path/to/sock`;
- `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`: the
  sentinels are asked for the current primary of `service`, and asked again after a failover.
Query parameters `socket_timeout` and `socket_connect_timeout` (seconds) override our defaults;
with Sentinel also `sentinel_password`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from scattergate.config import Config, ConfigError
from scattergate.state.store import StateStore

if TYPE_CHECKING:
    import redis
    from redis.retry import Retry

log = logging.getLogger(__name__)

# Short: a store call runs while an SMTP client waits (inside the RCPT / DATA deadlines), and a
# Redis that does not answer within a second is treated as down (tempfail), not waited for.
SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0
SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = {"socket_timeout", "socket_connect_timeout", "sentinel_password"}


def open_store(config: Config) -> StateStore:
    state = config.state
    if state.backend == "redis":
        from scattergate.state.redis import RedisStore  # redis-py is only needed for this backend

        store = RedisStore(redis_client(state.redis_url), keep_decisions=state.keep_decisions)
        try:
            store.ping()
        except OSError as exc:
            # Start anyway: sessions tempfail until Redis answers, then recover by themselves.
            log.warning("state store %s not reachable yet: %s", redact(state.redis_url), exc)
        return store
    from scattergate.state.sqlite import SqliteStore

    return SqliteStore(config.data_dir / "state.sqlite3", keep_decisions=state.keep_decisions)


def redis_client(url: str) -> redis.Redis:
    """A sync redis-py client for `url`, with short socket timeouts and one quick retry."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One immediate retry on a fresh connection: a pooled connection that Redis closed (restart,
    # failover) is replaced without failing the session; a Redis that stays down fails fast.
    # Never after a timeout: the command may have run (a HINCRBY batch or a rate-limit INCR
    # would then count twice), so a timeout is reported as the store being unavailable.
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    if url.startswith("redis+sentinel://"):
        return _sentinel_client(url, retry)
    try:
        return redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT, retry=retry,
        )
    except ValueError as exc:
        raise ConfigError(f"state.redis_url: {exc}") from None


def _sentinel_client(url: str, retry: Retry) -> redis.Redis:
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    sentinels = [_host_port(h) for h in hosts.split(",")]
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError("state.redis_url: expected redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - _SENTINEL_OPTIONS)
    if unknown:
        raise ConfigError(f"state.redis_url: unknown parameter {unknown[0]!r}")
    try:
        timeout = float(options.get("socket_timeout", SOCKET_TIMEOUT))
        connect_timeout = float(options.get("socket_connect_timeout", CONNECT_TIMEOUT))
    except ValueError:
        raise ConfigError("state.redis_url: socket_timeout and socket_connect_timeout are seconds") from None
    sentinel_kwargs: dict[str, object] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if "sentinel_password" in options:
        sentinel_kwargs["password"] = options["sentinel_password"]
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(
        path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
    )


def _host_port(text: str) -> tuple[str, int]:
    """'host', 'host:port', '[v6]' or '[v6]:port' → (host, port), the Sentinel port by default."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not port.isdigit()):
        raise ConfigError(f"state.redis_url: not a sentinel HOST[:PORT]: {text!r}")
    return host, int(port) if port else SENTINEL_PORT


def redact(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()
