"""Rate limits: the check (findings from windowed counters), its failure behaviour (fail open,
with a pause after a failure), the policy replies, and the Gateway's use of it per phase."""

from __future__ import annotations

import threading
from typing import AsyncIterator, Sequence

import pytest

from scattergate.address import parse_path
from scattergate.checks.ratelimit import RETRY_AFTER, RateLimiter, client_key
from scattergate.config import PolicyConfig, RateLimitConfig, RateLimits
from scattergate.decision.policy import Decider
from scattergate.model import Accept, Envelope, Finding, Session, Tempfail
from scattergate.pipeline import Gateway
from scattergate.state.store import StateStore
from tests.support.gateway import running_gateway


class MemoryStore:
    """Just enough of a StateStore: counters without windows, and a switch to fail."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls: list[list[str]] = []
        self.fail: BaseException | None = None
        self.block: threading.Event | None = None

    def hit(self, keys: Sequence[str], window: float, amount: int = 1) -> list[int]:
        self.calls.append(list(keys))
        if self.block is not None:
            self.block.wait(10)
        if self.fail is not None:
            raise self.fail
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + amount
        return [self.counts[k] for k in keys]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(store: MemoryStore, clock: Clock | None = None, **settings: object) -> RateLimiter:
    config = RateLimitConfig(window=3600)
    for key, value in settings.items():
        setattr(config, key, value)
    return RateLimiter(store, config, clock=clock or Clock())  # type: ignore[arg-type]


def envelope(sender: str = "a@Example.NET") -> Envelope:
    return Envelope(sender=parse_path(f"<{sender}>", allow_null=True))


OUTSIDE = Session(client_ip="192.0.2.7")
OURS = Session(client_ip="10.0.0.5", trusted=True)


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    # One /64 is one client: a host rotating through its prefix stays one counter.
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("unknown") == "unknown"


def test_no_limit_set_means_no_limiter() -> None:
    assert not RateLimiter.wanted(RateLimitConfig())
    assert RateLimiter.wanted(RateLimitConfig(messages_per_client=1))
    assert RateLimiter.wanted(RateLimitConfig(trusted=RateLimits(recipients_per_sender_domain=1)))


async def test_connections_over_the_limit() -> None:
    store = MemoryStore()
    rate = limiter(store, connections_per_client=2)
    assert await rate.at_connect(OUTSIDE) == []
    assert await rate.at_connect(OUTSIDE) == []
    (finding,) = await rate.at_connect(OUTSIDE)
    assert finding.key == "ratelimit.connections"
    assert finding.detail == "3 connections from 192.0.2.7 in 3600 s, limit 2"
    assert await rate.at_connect(Session(client_ip="192.0.2.8")) == []  # another client
    assert store.calls[0] == ["c:192.0.2.7"]


async def test_a_message_is_counted_once_at_its_first_rcpt() -> None:
    store = MemoryStore()
    rate = limiter(store, messages_per_client=1)
    first = envelope()
    assert await rate.at_rcpt(OUTSIDE, first) == ([], [])
    assert await rate.at_rcpt(OUTSIDE, first) == ([], [])  # its second recipient: no round trip
    assert store.calls == [["m:192.0.2.7"]]
    per_message, per_recipient = await rate.at_rcpt(OUTSIDE, envelope())
    assert [f.key for f in per_message] == ["ratelimit.messages"] and per_recipient == []


async def test_recipients_per_sender_domain_in_the_same_round_trip() -> None:
    store = MemoryStore()
    rate = limiter(store, messages_per_client=10, recipients_per_sender_domain=2)
    env = envelope("a@Example.NET")
    assert await rate.at_rcpt(OUTSIDE, env) == ([], [])
    assert store.calls == [["m:192.0.2.7", "r:example.net"]]  # both counters, one call
    assert await rate.at_rcpt(OUTSIDE, env) == ([], [])
    _, per_recipient = await rate.at_rcpt(Session(client_ip="198.51.100.1"), envelope("b@example.net"))
    assert [f.key for f in per_recipient] == ["ratelimit.recipients"]  # any client, same domain
    # The null sender has no domain to count: bounces are the backscatter check's business.
    store.calls.clear()
    assert await rate.at_rcpt(OUTSIDE, envelope("")) == ([], [])
    assert store.calls == [["m:192.0.2.7"]]


async def test_trusted_clients_are_exempt_or_counted_apart() -> None:
    store = MemoryStore()
    rate = limiter(store, connections_per_client=1, messages_per_client=1)
    for _ in range(3):
        assert await rate.at_connect(OURS) == []
        assert await rate.at_rcpt(OURS, envelope()) == ([], [])
    assert store.calls == []  # exempt: not even counted
    rate = limiter(store, messages_per_client=100, trusted=RateLimits(messages_per_client=1))
    assert await rate.at_rcpt(OURS, envelope()) == ([], [])
    per_message, _ = await rate.at_rcpt(OURS, envelope())
    assert [f.key for f in per_message] == ["ratelimit.messages"]
    assert store.calls[-1] == ["tm:10.0.0.5"]  # their own counter


async def test_a_failing_store_fails_open_and_is_left_alone_for_a_while() -> None:
    store, clock = MemoryStore(), Clock()
    rate = limiter(store, clock, connections_per_client=1)
    store.fail = OSError("redis: ConnectionError: refused")
    (finding,) = await rate.at_connect(OUTSIDE)
    assert finding.key == "ratelimit.unavailable" and "refused" in finding.detail
    store.fail = None
    clock.now += RETRY_AFTER / 2
    assert [f.key for f in await rate.at_connect(OUTSIDE)] == ["ratelimit.unavailable"]
    assert len(store.calls) == 1  # not asked again yet
    clock.now += RETRY_AFTER
    assert await rate.at_connect(OUTSIDE) == []
    assert len(store.calls) == 2


async def test_a_hung_store_costs_at_most_the_budget() -> None:
    store = MemoryStore()
    store.block = threading.Event()
    rate = limiter(store, messages_per_client=1, budget=0.05)
    env = envelope()
    try:
        _, per_recipient = await rate.at_rcpt(OUTSIDE, env)
    finally:
        store.block.set()
    assert [f.key for f in per_recipient] == ["ratelimit.unavailable"]
    assert "no answer within 0.05 s" in per_recipient[0].detail
    assert env.rate_counted  # not counted again at the next RCPT of this message


def test_policy_replies() -> None:
    decider = Decider()
    connections = decider.decide([Finding("ratelimit", "connections")])
    assert isinstance(connections, Tempfail) and str(connections.reply).startswith("421 4.7.0 ")
    for result in ("messages", "recipients"):
        verdict = decider.decide([Finding("ratelimit", result)])
        assert isinstance(verdict, Tempfail) and str(verdict.reply).startswith("450 4.7.1 ")
    assert isinstance(decider.decide([Finding("ratelimit", "unavailable")]), Accept)  # fail open
    closed = Decider(PolicyConfig(actions={"ratelimit.unavailable": "tempfail"}))
    verdict = closed.decide([Finding("ratelimit", "unavailable")])
    assert isinstance(verdict, Tempfail) and str(verdict.reply).startswith("451 4.3.0 ")


# -- through the Gateway --------------------------------------------------------------------

@pytest.fixture
async def gateway(make_config) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    config = make_config(receive={"domains": ["example.org"]},
                         rate_limits={"connections_per_client": 2, "messages_per_client": 2})
    async with running_gateway(config) as gw:
        yield gw


async def test_gateway_refuses_the_connection_over_its_rate(gateway: Gateway) -> None:
    sessions = [Session(client_ip="192.0.2.7") for _ in range(3)]
    verdicts = [await gateway.connect(s) for s in sessions]
    assert [type(v) for v in verdicts] == [Accept, Accept, Tempfail]
    assert verdicts[2].reply.code == 421
    for session in sessions:
        gateway.disconnect(session)
    assert gateway.active_sessions == 0


async def test_gateway_refuses_every_rcpt_of_a_message_over_the_rate(gateway: Gateway) -> None:
    session = Session(client_ip="192.0.2.7")
    postmaster = parse_path("<postmaster@example.org>")
    for _ in range(2):
        env = gateway.mail(session, parse_path("<a@example.net>"), ())
        assert isinstance(await gateway.rcpt(session, env, postmaster), Accept)
    env = gateway.mail(session, parse_path("<a@example.net>"), ())
    # A relay attempt is refused by the local checks without counting anything.
    relay = await gateway.rcpt(session, env, parse_path("<x@elsewhere.example>"))
    assert relay.reply.code == 554 and not env.rate_counted
    for _ in range(2):
        verdict = await gateway.rcpt(session, env, postmaster)
        assert isinstance(verdict, Tempfail) and verdict.reply.code == 450
    assert gateway.rate is not None
    assert gateway.rate.store.hit(["m:192.0.2.7"], 3600) == [4]  # the third message counted once
