"""Two `scattergate serve` processes sharing one real Redis: what one gateway learns, the other
knows; and when Redis is down or hung, mail that needs it is tempfailed, never accepted and
lost, and everything works again once Redis is back — without restarting the gateways.

Our users connect from 127.0.0.1 (trusted); the outside world from 127.0.0.2.
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn
from scattergate.state.factory import redis_client
from scattergate.state.redis import RedisStore
from tests.support.redis_server import RedisServer, redis_sentinel, redis_server  # noqa: F401  (fixtures)
from tests.support.sink import SmtpSink

pytestmark = pytest.mark.system

OUTSIDE = ("127.0.0.2", 0)
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\nTo: friend@remote.example\r\nSubject: lunch?\r\n"
    b"Message-ID: <lunch-1@example.org>\r\n\r\nAre you free?\r\n"
)


class GatewayProcess:
    """`scattergate serve` with a config file; its stderr is read in a thread (never fills)."""

    def __init__(self, directory: Path, config: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sg.toml").write_text(config)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "scattergate", "serve", "--config", "sg.toml"],
            cwd=directory, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        for line in self.process.stderr:  # readiness: the "listening" line
            self.lines.append(line)
            match = re.search(r"listening on \S+ port (\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise AssertionError(f"serve exited with {self.process.wait()}:\n{''.join(self.lines)}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> int:
        """SIGTERM: drain, flush the recorder, exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


class Site:
    """Redis, a downstream, and gateways A and B sharing Redis and the site secret."""

    def __init__(self, directory: Path, redis: RedisServer, sink: SmtpSink) -> None:
        self.directory = directory
        self.redis = redis
        self.sink = sink
        self.gateways: list[GatewayProcess] = []

    def start(self, redis_query: str = "", sections: str = "", **backscatter: str) -> tuple[GatewayProcess, GatewayProcess]:
        """Gateways A and B; `sections`: more TOML tables for both."""
        extra = "".join(f'{k} = "{v}"\n' for k, v in backscatter.items())
        for name in ("a", "b"):
            config = (
                f'[server]\nlisten = "127.0.0.1:0"\nhostname = "mx-{name}.example.org"\n'
                f'[receive]\ndomains = ["example.org"]\ntrusted_networks = ["127.0.0.1/32"]\n'
                f'[delivery]\nrelay = "{self.sink.address}"\nverify_recipients = false\n'
                f'[state]\ndata_dir = "{self.directory / name / "data"}"\nflush_interval = 0.05\n'
                f'backend = "redis"\nredis_url = "{self.redis.url}{redis_query}"\n'
                f'[logging]\nfile = ""\n'
                f'[auth]\nspf = false\ndkim = false\ndmarc = false\n'
                f'[backscatter]\nsecret_file = "{self.directory / "site.key"}"\nbatv_mode = "score"\n{extra}'
                f'{sections}'
            )
            self.gateways.append(GatewayProcess(self.directory / name, config))
        return self.gateways[-2], self.gateways[-1]

    def store(self) -> RedisStore:
        """The shared state as any gateway (or a CLI beside it) sees it."""
        return RedisStore(redis_client(self.redis.url))


@pytest.fixture
def site(tmp_path: Path, redis_server, smtp_sink) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    site = Site(tmp_path, redis_server(), smtp_sink())
    yield site
    for gateway in site.gateways:
        gateway.stop()


def send_outbound(gw: GatewayProcess, original: bytes = ORIGINAL) -> tuple[int, str]:
    """Alice sends through a gateway (trusted): BATV-signed, Message-ID recorded."""
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("laptop.example.org")
        client.mail("alice@example.org")
        client.rcpt("friend@remote.example")
        code, text = client.data(original)
        return code, text.decode()


def relayed_outbound(sink: SmtpSink, message_id: bytes = b"lunch-1@example.org") -> tuple[str, bytes]:
    """The envelope sender and message of our outbound mail, as the downstream got it."""
    (dump,) = [d for d in sink.messages() if message_id in d and b"X-Mail-Args: <>" not in d]
    sender = re.search(rb"^X-Mail-Args: <([^>]*)>", dump, re.M).group(1).decode()  # type: ignore[union-attr]
    return sender, dump.split(b"\n", 5)[-1].replace(b"\n", b"\r\n")


def bounce_for(original: bytes, to: str) -> bytes:
    failed = FailedMessage(
        sender=to, original=original,
        recipients=[RecipientStatus("friend@remote.example", "5.1.1", diagnostic="550 5.1.1 no such user")],
        reporting_mta="mx.remote.example", arrival=datetime.now(timezone.utc),
    )
    return build_dsn(failed, now=datetime.now(timezone.utc)).data


def without_token(message: bytes) -> bytes:
    """Our message as a bounce might quote it without our token: only the registry can vouch."""
    return re.sub(rb"X-Scattergate-Token: [0-9a-f]+\r\n", b"", message)


def from_outside(gw: GatewayProcess, sender: str, rcpt: str, data: bytes) -> tuple[int, str]:
    with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
        client.ehlo("mx.remote.example")
        client.mail(sender)
        code, text = client.rcpt(rcpt)
        if code != 250:
            return code, text.decode()
        code, text = client.data(data)
        return code, text.decode()


def test_a_bounce_at_b_for_mail_sent_through_a_is_accepted(site: Site) -> None:
    a, b = site.start()
    assert send_outbound(a)[0] == 250
    tagged, relayed = relayed_outbound(site.sink)
    assert tagged.startswith("prvs=")
    # BATV evidence: B verifies A's tag with the shared site secret.
    assert from_outside(b, "", tagged, bounce_for(relayed, tagged))[0] == 250
    # Registry evidence only (untagged, no token): B finds A's Message-ID in Redis.
    code, text = from_outside(b, "", "alice@example.org", bounce_for(without_token(relayed), "alice@example.org"))
    assert code == 250, text
    forged = without_token(relayed).replace(b"lunch-1@example.org", b"never-sent@example.org")
    code, text = from_outside(b, "", "alice@example.org", bounce_for(forged, "alice@example.org"))
    assert code == 550 and "backscatter" in text
    assert re.search(r"findings=.*backscatter\.solicited\[.*evidence=registry", "".join(b.lines))


def test_a_message_held_by_a_is_visible_from_b(site: Site, tmp_path: Path) -> None:
    a, b = site.start(mode="quarantine")
    forged = ORIGINAL.replace(b"lunch-1@example.org", b"never-sent@example.org")
    code, text = from_outside(a, "", "alice@example.org", bounce_for(forged, "alice@example.org"))
    assert code == 250 and "held as" in text, text
    item_id = text.rsplit(" ", 1)[-1]
    # What gateway B (or a CLI beside it) sees: B's own data dir has no such file.
    seen_from_b = site.store()
    item = seen_from_b.quarantine_get(item_id)
    assert item is not None and "backscatter.unsolicited" in item.reason
    assert Path(item.path).is_relative_to(tmp_path / "a")
    assert not (tmp_path / "b" / "data" / "quarantine" / f"{item_id}.eml").exists()
    content = seen_from_b.quarantine_content(item_id)
    assert content is not None and b"never-sent@example.org" in content
    assert [i.id for i in seen_from_b.quarantine_list(search="alice@example.org")] == [item_id]


def test_counters_from_both_gateways_add_up(site: Site) -> None:
    a, b = site.start()
    for gw, count in ((a, 3), (b, 2)):
        for _ in range(count):
            assert from_outside(gw, "friend@remote.example", "alice@example.org", b"Subject: hi\r\n\r\nhi\r\n")[0] == 250
    assert from_outside(b, "friend@remote.example", "nobody@elsewhere.example", b"x")[0] == 554
    assert a.stop() == 0 and b.stop() == 0  # SIGTERM flushes what is still buffered
    counters = site.store().counters()
    assert counters["sessions"] == 6
    assert counters["decisions.data.accept"] == 5
    assert counters["decisions.rcpt.reject"] == 1
    decisions = site.store().recent_decisions(limit=100)
    assert len(decisions) == 6 and {d.verdict for d in decisions} == {"accept", "reject"}


def test_redis_down_tempfails_what_needs_it_and_recovers(site: Site) -> None:
    a, b = site.start()
    assert send_outbound(a)[0] == 250
    _, relayed = relayed_outbound(site.sink)
    registry_bounce = bounce_for(without_token(relayed), "alice@example.org")
    site.redis.save()  # Redis restarts with its data, as a persistent production Redis would
    site.redis.stop()

    # The registry is needed: tempfail, at B for the lookup and at A for remembering new mail.
    code, text = from_outside(b, "", "alice@example.org", registry_bounce)
    assert code == 451, text
    second = ORIGINAL.replace(b"lunch-1@", b"lunch-2@")
    code, text = send_outbound(a, second)
    assert code == 451 and "Cannot record" in text, text
    assert not [d for d in site.sink.messages() if b"lunch-2@example.org" in d]  # not relayed either
    # Mail that needs no shared state still flows (only its counters may be lost).
    assert from_outside(a, "friend@remote.example", "alice@example.org", b"Subject: hi\r\n\r\nhi\r\n")[0] == 250

    site.redis.start()  # same port; the gateways reconnect by themselves
    assert from_outside(b, "", "alice@example.org", registry_bounce)[0] == 250
    assert send_outbound(a, second)[0] == 250
    _, relayed2 = relayed_outbound(site.sink, b"lunch-2@example.org")
    code, text = from_outside(b, "", "alice@example.org", bounce_for(without_token(relayed2), "alice@example.org"))
    assert code == 250, text


def test_a_hung_redis_tempfails_within_the_socket_timeout(site: Site) -> None:
    a, b = site.start(redis_query="?socket_timeout=0.5")
    assert send_outbound(a)[0] == 250
    _, relayed = relayed_outbound(site.sink)
    registry_bounce = bounce_for(without_token(relayed), "alice@example.org")
    site.redis.pause()
    try:
        code, text = from_outside(b, "", "alice@example.org", registry_bounce)
        assert code == 451, text
    finally:
        site.redis.resume()
    assert from_outside(b, "", "alice@example.org", registry_bounce)[0] == 250


def test_quarantine_hold_with_redis_down_is_a_tempfail(site: Site) -> None:
    a, _ = site.start(mode="quarantine")
    site.redis.stop()
    # A bounce to two recipients is held without asking the registry: only the hold needs Redis.
    forged = ORIGINAL.replace(b"lunch-1@example.org", b"never-sent@example.org")
    with smtplib.SMTP(*a.address, source_address=OUTSIDE) as client:
        client.ehlo("mx.remote.example")
        client.mail("")
        assert client.rcpt("alice@example.org")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        code, text = client.data(bounce_for(forged, "alice@example.org"))
    assert code == 451 and b"Cannot store" in text, text
    site.redis.start()
    assert site.store().quarantine_list() == []  # nothing half-held in the index


RATE_LIMITS = '[rate_limits]\nwindow = 3600.0\nmessages_per_client = 5\nconnections_per_client = 100\n'


def test_rate_limits_are_shared_by_gateways_on_one_redis(site: Site) -> None:
    a, b = site.start(sections=RATE_LIMITS)
    hi = b"Subject: hi\r\n\r\nhi\r\n"
    results = [from_outside(gw, "friend@remote.example", "alice@example.org", hi) for gw in (a, a, a, b, b)]
    assert [code for code, _ in results] == [250] * 5
    # The 6th message from this client within the window: refused, whichever gateway gets it.
    code, text = from_outside(b, "friend@remote.example", "alice@example.org", hi)
    assert code == 450 and "4.7.1 Too much mail" in text, text
    code, _ = from_outside(a, "friend@remote.example", "alice@example.org", hi)
    assert code == 450
    counts = site.store().client
    assert int(counts.get("{scattergate}:rate:m:127.0.0.2")) == 7
    assert int(counts.get("{scattergate}:rate:c:127.0.0.2")) == 7  # connections, counted apart
    assert 3_590_000 < counts.pttl("{scattergate}:rate:m:127.0.0.2") <= 3_600_000


def test_rate_limits_fail_open_while_redis_is_down(site: Site) -> None:
    """A rate-limit count is not worth an outage: with Redis down ordinary mail still flows,
    while what needs the shared state (the registry) still tempfails."""
    a, b = site.start(sections=RATE_LIMITS)
    assert send_outbound(a)[0] == 250
    _, relayed = relayed_outbound(site.sink)
    site.redis.stop()
    hi = b"Subject: hi\r\n\r\nhi\r\n"
    for _ in range(7):  # more than the limit: nothing counts them now
        assert from_outside(a, "friend@remote.example", "alice@example.org", hi)[0] == 250
    code, text = from_outside(b, "", "alice@example.org", bounce_for(without_token(relayed), "alice@example.org"))
    assert code == 451, text
    assert any("rate limits skipped" in line for line in a.lines)


def poll(condition, what: str, deadline: float = 30.0, log: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Wait for `condition()` to hold, asking every 50 ms, for at most `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what}:\n" + "".join((log or [])[-30:])
        threading.Event().wait(0.05)


@pytest.mark.timeout(240)  # two gateways, three Redis processes, a failover: slow on a busy machine
def test_sentinel_failover_costs_451_at_most_and_recovers_without_a_restart(  # type: ignore[no-untyped-def]
    tmp_path: Path, redis_server, redis_sentinel, smtp_sink
) -> None:
    import redis

    primary: RedisServer = redis_server()
    replica: RedisServer = redis_server("--replicaof", "127.0.0.1", str(primary.port))
    replica_client = redis.Redis(host="127.0.0.1", port=replica.port)
    poll(lambda: replica_client.info("replication")["master_link_status"] == "up", "replication")
    sentinel = redis_sentinel(primary, down_after_milliseconds=500, failover_timeout=2000)
    ask = redis.Redis(host="127.0.0.1", port=sentinel.port, decode_responses=True)
    poll(lambda: any(r["port"] == replica.port and r["flags"] == "slave" for r in ask.sentinel_slaves(sentinel.name)),
         "the sentinel to know the replica", log=sentinel.log)

    site = Site(tmp_path, sentinel, smtp_sink())  # type: ignore[arg-type]  # its url is the Sentinel URL
    try:
        a, b = site.start(sections=RATE_LIMITS)
        assert send_outbound(a)[0] == 250
        assert redis.Redis(host="127.0.0.1", port=primary.port).wait(1, 5000) == 1  # replicated
        _, relayed = relayed_outbound(site.sink)
        registry_bounce = bounce_for(without_token(relayed), "alice@example.org")
        hi = b"Subject: hi\r\n\r\nhi\r\n"

        primary.kill()
        # The outage: what needs the shared state is tempfailed, nothing is accepted and lost;
        # mail that needs none flows (rate limits fail open).
        second = ORIGINAL.replace(b"lunch-1@", b"lunch-2@")
        code, text = send_outbound(a, second)
        assert code == 451 and "Cannot record" in text, text
        assert from_outside(b, "", "alice@example.org", registry_bounce)[0] == 451
        assert from_outside(b, "friend@remote.example", "alice@example.org", hi)[0] == 250

        # +switch-master: SENTINEL MASTERS (what redis-py asks) names the promoted replica. Until
        # then the gateways still find no usable primary, and say 451.
        poll(lambda: ask.sentinel_masters()[sentinel.name]["port"] == replica.port,
             "the sentinel to promote the replica", deadline=60, log=sentinel.log)
        # Same gateway processes, no restart: the next store call asks the sentinel again.
        code, text = send_outbound(a, second)
        assert code == 250, text
        assert replica_client.info("replication")["role"] == "master"
        assert from_outside(b, "", "alice@example.org", registry_bounce)[0] == 250  # replicated entry
        _, relayed2 = relayed_outbound(site.sink, b"lunch-2@example.org")
        code, text = from_outside(b, "", "alice@example.org", bounce_for(without_token(relayed2), "alice@example.org"))
        assert code == 250, text  # registered on the new primary, seen from the other gateway
        assert replica_client.get("{scattergate}:rate:c:127.0.0.2") is not None  # rate limits count again
        assert all(g.process.poll() is None for g in (a, b))
    finally:
        for gateway in site.gateways:
            gateway.stop()
