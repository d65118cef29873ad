"""What only the Redis store has: key expiry, content shared between gateways, failures that
end as `StoreUnavailable` (an OSError) instead of hanging, recovery, Sentinel URLs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scattergate.config import Config, ConfigError
from scattergate.state.factory import _host_port, open_store, redact, redis_client
from scattergate.state.redis import RedisStore, StoreUnavailable
from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import QuarantineItem
from scattergate.config_check import validate
from tests.support.redis_server import RedisServer, redis_sentinel, redis_server  # noqa: F401  (fixtures)


def store_for(url: str) -> RedisStore:
    return RedisStore(redis_client(url))


def config_for(tmp_path: Path, **state: object) -> Config:
    config = Config()
    config.state.data_dir = str(tmp_path / "data")
    for key, value in state.items():
        setattr(config.state, key, value)
    validate(config)
    return config


def test_sent_entries_expire_by_key_ttl(redis_server) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    store = store_for(server.url)
    store.sent_add("h1", "alice@example.org", time.time(), 8 * 86400)
    ttl_ms = store.client.pttl("{scattergate}:sent:h1")
    assert 8 * 86400 * 1000 - 60_000 < ttl_ms <= 8 * 86400 * 1000


def test_quarantined_content_is_readable_from_another_gateway(redis_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    holder, other = store_for(server.url), store_for(server.url)
    path = tmp_path / "q1.eml"
    content = b"Subject: held\r\n\r\n" + bytes(range(256)) * 100
    path.write_bytes(content)
    holder.quarantine_add(QuarantineItem("q1", 1.0, "s@example.net", ("r@example.org",), "policy", len(content), str(path)))
    path.unlink()  # the other gateway has no access to the holder's disk
    assert other.quarantine_get("q1") is not None
    assert other.quarantine_content("q1") == content
    other.quarantine_remove("q1")
    assert holder.quarantine_content("q1") is None and holder.quarantine_list() == []


def test_redis_down_raises_store_unavailable_quickly_then_recovers(redis_server) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    store = store_for(server.url)
    store.add({"sessions": 1}, [])
    store.sent_add("h1", "alice@example.org", 10.0, 3600)
    server.save()
    server.stop()
    calls = [
        lambda: store.sent_lookup("h1", 0), lambda: store.sent_add("h2", "a@example.org", 1.0, 60),
        lambda: store.add({"sessions": 1}, []), store.counters, store.quarantine_list,
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert isinstance(caught.value, OSError)  # callers that tempfail on OSError cover Redis
        assert time.monotonic() - started < 5
    server.start()  # same port, loads the snapshot: the pooled connections are stale now
    assert store.sent_lookup("h1", 0) == "alice@example.org"
    assert store.counters() == {"sessions": 1}


def test_a_hung_redis_times_out_instead_of_hanging(redis_server) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    store = store_for(server.url + "?socket_timeout=0.3")
    store.sent_add("h1", "alice@example.org", 10.0, 3600)
    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.sent_lookup("h1", 0)
        assert time.monotonic() - started < 3  # socket timeout 0.3 s, one retry
    finally:
        server.resume()
    assert store.sent_lookup("h1", 0) == "alice@example.org"


def test_open_store_starts_even_when_redis_is_down(tmp_path: Path) -> None:
    from tests.support.sink import free_port

    store = open_store(config_for(tmp_path, backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert isinstance(store, RedisStore)
    with pytest.raises(StoreUnavailable):
        store.counters()
    store.close()


def test_sqlite_stays_the_default(tmp_path: Path) -> None:
    store = open_store(config_for(tmp_path))
    assert isinstance(store, SqliteStore)
    store.close()


@pytest.mark.parametrize("state, message", [
    ({"backend": "memcached"}, "state.backend"),
    ({"backend": "redis"}, "state.redis_url"),
    ({"backend": "redis", "redis_url": "127.0.0.1:6379"}, "state.redis_url"),
])
def test_bad_state_settings_name_the_key(tmp_path: Path, state: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(tmp_path, **state)


def test_sentinel_url_finds_the_primary(redis_server, redis_sentinel, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    primary: RedisServer = redis_server()
    sentinel = redis_sentinel(primary)
    store = open_store(config_for(tmp_path, backend="redis", redis_url=sentinel.url))
    store.sent_add("h1", "alice@example.org", 10.0, 3600)
    direct = store_for(primary.url)  # the data is on the primary the sentinel named
    assert direct.sent_lookup("h1", 0) == "alice@example.org"
    store.close()


@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379/",             # no service
    "redis+sentinel://127.0.0.1:26379/svc/zero",     # db not a number
    "redis+sentinel://127.0.0.1:x/svc",              # bad port
    "redis+sentinel://127.0.0.1/svc?db=1",           # unknown parameter
    "redis+sentinel://127.0.0.1/svc?socket_timeout=soon",
])
def test_bad_sentinel_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="state.redis_url"):
        redis_client(url)


def test_sentinel_hosts_and_redaction() -> None:
    assert _host_port("10.0.0.1") == ("10.0.0.1", 26379)
    assert _host_port("[::1]:26380") == ("::1", 26380)
    assert _host_port("::1") == ("::1", 26379)
    assert redact("redis://:s3cret@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert "s3cret" not in redact("redis+sentinel://u:s3cret@a:1,b:2/svc")


def test_a_rate_window_expires_on_redis_clock_and_hits_do_not_extend_it(redis_server) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    store = store_for(server.url)
    assert store.hit(["m:192.0.2.7"], 60) == [1]
    first = store.client.pttl("{scattergate}:rate:m:192.0.2.7")
    assert 55_000 < first <= 60_000
    assert store.hit(["m:192.0.2.7"], 60) == [2]
    assert store.client.pttl("{scattergate}:rate:m:192.0.2.7") <= first  # fixed window: not renewed
    # A 1 ms window: once Redis has expired the key, counting starts again.
    store.hit(["c:192.0.2.7"], 0.001)
    deadline = time.monotonic() + 5
    while store.client.exists("{scattergate}:rate:c:192.0.2.7") and time.monotonic() < deadline:
        pass
    assert store.hit(["c:192.0.2.7"], 0.001) == [1]


def test_rate_hits_with_redis_down_raise_store_unavailable(redis_server) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server()
    store = store_for(server.url)
    server.stop()
    with pytest.raises(StoreUnavailable):
        store.hit(["m:192.0.2.7"], 60)


def test_a_write_that_timed_out_is_never_sent_again(redis_server) -> None:  # type: ignore[no-untyped-def]
    # Seen in the suite: counters added up to more than was counted. A HINCRBY batch whose reply
    # came later than the socket timeout was retried on a fresh connection, and Redis then ran
    # both. A timeout is not a refused write: it may have run, so it is reported, never resent.
    import redis

    server: RedisServer = redis_server()
    store = store_for(server.url)
    pauser = redis.Redis.from_url(server.url)
    pauser.execute_command("CLIENT", "PAUSE", "1800", "ALL")  # commands wait, then run
    with pytest.raises(StoreUnavailable):
        store.add({"sessions": 1}, [])
    pauser.execute_command("CLIENT", "UNPAUSE")  # answered at once, or when the pause ends
    # Counted once or (Redis drops a closed client's unread commands) not at all; never twice.
    assert store.counters().get("sessions", 0) <= 1
    before = store.counters().get("sessions", 0)
    store.add({"sessions": 1}, [])
    assert store.counters()["sessions"] == before + 1
