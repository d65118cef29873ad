"""The async resolver against a real loopback DNS server: answers, errors, cache, concurrency."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Iterator

import pytest

from scattergate.net.dns import DnsConfig, DnsNotFound, DnsTempError, Resolver
from tests.support.dns_server import DnsTestServer, resolver_config

ZONE = {
    "example.org": [("A", "192.0.2.1"), ("AAAA", "2001:db8::1"), ("MX", [20, "mx2.example.org"]),
                    ("MX", [10, "mx1.example.org"]), ("TXT", "v=spf1 -all"),
                    ("TXT", ["hello ", "world"])],
    "alias.example.org": [("CNAME", "example.org")],
    "big.example.org": [("TXT", "k=" + "x" * 3000)],
    "1.2.0.192.in-addr.arpa": [("PTR", "host.example.org")],
    "slow.example.org": [("A", "192.0.2.50")],
    "fast.example.org": [("A", "192.0.2.51")],
    "hosed.example.org": [("TXT", b"caf\xe9")],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer(ZONE, ttl=300, soa_minimum=30) as srv:
        yield srv


@pytest.fixture
def fresh(server: DnsTestServer) -> Iterator[DnsTestServer]:
    server.set_zone(ZONE)  # resets knobs and the query log
    yield server


def make(server: DnsTestServer, clock: Clock | None = None, **cfg: object) -> Resolver:
    config = resolver_config(server, **cfg)
    assert isinstance(config, DnsConfig)
    return Resolver(config, clock=clock) if clock else Resolver(config)


def sent(server: DnsTestServer, name: str, rtype: str) -> int:
    return sum(1 for q in server.queries if q[0].lower() == name and q[1] == rtype)


async def test_typed_answers(fresh: DnsTestServer) -> None:
    r = make(fresh)
    assert await r.a("example.org") == ["192.0.2.1"]
    assert await r.aaaa("example.org") == ["2001:db8::1"]
    assert await r.mx("example.org") == [(10, "mx1.example.org"), (20, "mx2.example.org")]
    assert sorted(await r.txt("example.org")) == ["hello world", "v=spf1 -all"]
    assert sorted(await r.txt_strings("example.org")) == [(b"hello ", b"world"), (b"v=spf1 -all",)]
    assert await r.ptr("192.0.2.1") == ["host.example.org"]
    assert await r.a("ALIAS.example.org.") == ["192.0.2.1"]  # CNAME followed, case-insensitive


async def test_non_utf8_txt_is_decoded_lossily(fresh: DnsTestServer) -> None:
    r = make(fresh)
    assert await r.txt_bytes("hosed.example.org") == [b"caf\xe9"]
    assert await r.txt("hosed.example.org") == ["caf\ufffd"]


async def test_nxdomain_nodata_and_bad_names(fresh: DnsTestServer) -> None:
    r = make(fresh)
    with pytest.raises(DnsNotFound):
        await r.a("missing.example.org")
    assert await r.aaaa("fast.example.org") == []  # NODATA is an empty list
    for bad in ("", "a..b.example", "x" * 64 + ".example.org", "[192.0.2.1]", " spaced"):
        with pytest.raises(DnsNotFound):
            await r.txt(bad)
    with pytest.raises(DnsNotFound):
        await r.ptr("not-an-ip")


async def test_servfail_and_timeout_are_temporary(fresh: DnsTestServer) -> None:
    fresh.servfail.add("example.org")
    fresh.drop.add(("fast.example.org", "A"))
    r = make(fresh, timeout=0.2, lifetime=0.2)
    with pytest.raises(DnsTempError):
        await r.a("example.org")
    with pytest.raises(DnsTempError, match="timeout"):
        await r.a("fast.example.org")
    assert await r.aaaa("fast.example.org") == []  # only the (name, A) pair was dropped


async def test_tcp_fallback_for_truncated_answers(fresh: DnsTestServer) -> None:
    r = make(fresh)
    assert len((await r.txt("big.example.org"))[0]) == 3002
    assert [q[2] for q in fresh.queries if q[0] == "big.example.org"] == ["udp", "tcp"]
    fresh.truncate.add("example.org")  # forced TC even for a small answer
    assert await r.a("example.org") == ["192.0.2.1"]
    assert [q[2] for q in fresh.queries if q[0] == "example.org"] == ["udp", "tcp"]


async def test_positive_cache_respects_ttl_and_cap(fresh: DnsTestServer) -> None:
    clock = Clock()
    r = make(fresh, clock, max_ttl=100)  # zone TTL is 300: capped to 100
    for _ in range(3):
        await r.a("example.org")
    assert sent(fresh, "example.org", "A") == 1
    clock.now += 99
    await r.a("example.org")
    assert sent(fresh, "example.org", "A") == 1
    clock.now += 2
    await r.a("example.org")
    assert sent(fresh, "example.org", "A") == 2


async def test_every_spelling_of_a_name_shares_one_cache_entry(fresh: DnsTestServer) -> None:
    r = make(fresh)
    for spelling in ["example.org", "EXAMPLE.org", "example.org.", "Example.Org."] * 2:
        assert await r.a(spelling) == ["192.0.2.1"]
        assert sorted(await r.txt(spelling)) == ["hello world", "v=spf1 -all"]
    assert sent(fresh, "example.org", "A") == 1 and sent(fresh, "example.org", "TXT") == 1
    # More spellings than the resolver remembers (4,096): answers and the cache are unchanged.
    spellings = ["".join(letters) for letters in itertools.product(*((c, c.upper()) for c in "example.org"))]
    for spelling in spellings:
        for name, rdtype in ((spelling, "A"), (spelling + ".", "A"), (spelling, 1), (spelling + ".", 1)):
            assert [r.address for r in await r.query(name, rdtype)] == ["192.0.2.1"]
    assert len(spellings) * 4 > 4096
    assert sent(fresh, "example.org", "A") == 1


async def test_negative_cache_uses_soa_minimum_with_cap(fresh: DnsTestServer) -> None:
    clock = Clock()
    r = make(fresh, clock)
    for _ in range(2):
        with pytest.raises(DnsNotFound):
            await r.a("missing.example.org")
        assert await r.aaaa("fast.example.org") == []
    assert sent(fresh, "missing.example.org", "A") == 1
    assert sent(fresh, "fast.example.org", "AAAA") == 1
    clock.now += 31  # SOA minimum is 30
    with pytest.raises(DnsNotFound):
        await r.a("missing.example.org")
    assert sent(fresh, "missing.example.org", "A") == 2

    capped = make(fresh, clock, negative_max_ttl=5)
    with pytest.raises(DnsNotFound):
        await capped.a("missing2.example.org")
    clock.now += 6
    with pytest.raises(DnsNotFound):
        await capped.a("missing2.example.org")
    assert sent(fresh, "missing2.example.org", "A") == 2


async def test_temporary_failures_are_not_cached_unless_asked(fresh: DnsTestServer) -> None:
    fresh.servfail.add("example.org")
    clock = Clock()
    r = make(fresh, clock)
    for _ in range(2):
        with pytest.raises(DnsTempError):
            await r.a("example.org")
    assert sent(fresh, "example.org", "A") == 2

    brief = make(fresh, clock, tempfail_ttl=5)
    for _ in range(2):
        with pytest.raises(DnsTempError):
            await brief.mx("example.org")
    assert sent(fresh, "example.org", "MX") == 1
    clock.now += 6
    fresh.servfail.clear()
    assert await brief.mx("example.org") != []


async def test_slow_answer_does_not_stall_other_queries(fresh: DnsTestServer) -> None:
    fresh.delay["slow.example.org"] = 1.0  # held by the server's loop
    r = make(fresh, lifetime=3.0, timeout=3.0)
    slow = asyncio.ensure_future(r.a("slow.example.org"))
    fast = asyncio.ensure_future(r.a("fast.example.org"))
    done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {fast} and not slow.done()
    assert await slow == ["192.0.2.50"]


async def test_concurrent_identical_queries_share_one_lookup(fresh: DnsTestServer) -> None:
    fresh.delay["slow.example.org"] = 0.2
    r = make(fresh, lifetime=2.0, timeout=2.0)
    results = await asyncio.gather(*(r.a("slow.example.org") for _ in range(5)))
    assert results == [["192.0.2.50"]] * 5
    assert sent(fresh, "slow.example.org", "A") == 1


async def test_cancelling_one_waiter_leaves_the_others(fresh: DnsTestServer) -> None:
    fresh.delay["slow.example.org"] = 0.2
    r = make(fresh, lifetime=2.0, timeout=2.0)
    first = asyncio.ensure_future(r.a("slow.example.org"))
    second = asyncio.ensure_future(r.a("slow.example.org"))
    await asyncio.sleep(0)  # let both start waiting (no timing involved)
    first.cancel()
    assert await second == ["192.0.2.50"]


async def test_run_blocking_bridges_threads_to_the_loop(fresh: DnsTestServer) -> None:
    fresh.delay["slow.example.org"] = 1.0
    r = make(fresh, lifetime=3.0, timeout=3.0)
    seen: list[str] = []

    def work(dns: object) -> list[str]:
        seen.append(threading.current_thread().name)
        return dns.a("slow.example.org") + [dns.mx("example.org")[0][1]]  # type: ignore[attr-defined]

    job = asyncio.ensure_future(r.run_blocking(work))
    # The loop stays free while the thread waits for DNS.
    assert await r.a("fast.example.org") == ["192.0.2.51"]
    assert not job.done()
    assert await job == ["192.0.2.50", "mx1.example.org"]
    assert seen[0].startswith("dns-blocking")
    r.close()


async def test_run_cached_first_uses_the_loop_only_when_every_answer_is_cached(fresh: DnsTestServer) -> None:
    r = make(fresh)
    threads: list[str] = []

    def work(dns: object) -> list[str]:
        threads.append(threading.current_thread().name)
        return dns.a("fast.example.org") + dns.txt("example.org")  # type: ignore[attr-defined]

    cold = await r.run_cached_first(work)
    # Cold: the first lookup misses, so the whole job runs again in a worker thread.
    assert threads == [threading.current_thread().name, threads[1]]
    assert threads[1].startswith("dns-blocking")
    threads.clear()
    assert await r.run_cached_first(work) == cold
    assert threads == [threading.current_thread().name]  # warm: once, on the loop
    assert sent(fresh, "fast.example.org", "A") == 1
    r.close()


async def test_run_cached_first_notices_a_miss_the_library_swallowed(fresh: DnsTestServer) -> None:
    r = make(fresh)
    await r.a("fast.example.org")

    def careless(dns: object) -> str:
        try:
            dns.a("slow.example.org")  # type: ignore[attr-defined]
        except Exception:  # pyspf swallows some errors (exp=): the result would be wrong
            return "guessed"
        return "looked up"

    assert await r.run_cached_first(careless) == "looked up"
    r.close()


async def test_run_cached_first_raises_the_jobs_own_error(fresh: DnsTestServer) -> None:
    r = make(fresh)
    await r.a("fast.example.org")
    calls: list[int] = []

    def broken(dns: object) -> None:
        calls.append(len(dns.a("fast.example.org")))  # type: ignore[attr-defined]
        raise ValueError("library bug")

    with pytest.raises(ValueError):
        await r.run_cached_first(broken)
    assert calls == [1]  # not run a second time in a thread: no lookup missed
    r.close()


async def test_cached_answers_and_errors_without_asking(fresh: DnsTestServer) -> None:
    clock = Clock()
    r = make(fresh, clock)
    assert r.cached("example.org", "A") is None
    await r.a("example.org")
    with pytest.raises(DnsNotFound):
        await r.a("missing.example.org")
    assert [x.address for x in r.cached("EXAMPLE.org.", "A") or ()] == ["192.0.2.1"]  # type: ignore[attr-defined]
    with pytest.raises(DnsNotFound):
        r.cached("missing.example.org", "A")
    clock.now += 301
    assert r.cached("example.org", "A") is None  # expired: a nameserver must be asked
    r.close()


async def test_unreachable_nameserver_is_temporary() -> None:
    # A loopback port with nothing listening: ICMP refusal or timeout, either way temporary.
    with DnsTestServer() as srv:
        port = srv.port
    r = Resolver(DnsConfig(nameservers=("127.0.0.1",), port=port, timeout=0.2, lifetime=0.2))
    with pytest.raises(DnsTempError):
        await r.a("example.org")
