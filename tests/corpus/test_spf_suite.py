"""The RFC 7208 SPF test suite (openspf 2014.04), every scenario served by a real DNS server.

Each scenario's `zonedata` is loaded into the loopback test DNS server and each test runs
`check_spf` through our resolver (UDP/TCP to 127.0.0.1), exactly as the gateway does.

Zone data conventions of the suite (its README and driver semantics):
- a name with SPF-type records and no TXT entry also gets those records as TXT (the suite is
  written for both record types; RFC 7208 implementations only query TXT);
- `TXT: NONE` marks "no TXT records here" (and stops that duplication);
- `TIMEOUT` makes queries for record types the name does not list time out.
Where a test lists several acceptable results, any of them passes; where it gives an
`explanation`, the exp= text must match (the default explanation is set to "DEFAULT").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml  # PyYAML: a test dependency

from scattergate.checks.spf import check_spf
from scattergate.net.dns import DnsConfig, Resolver
from tests.support.dns_server import DnsTestServer

SUITE = Path(__file__).parent / "data" / "spf" / "rfc7208-tests.yml"
TOTAL = 203
_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")

# Tests we knowingly fail, with the reason (documented in docs/sender-auth.md). Empty: 203/203.
XFAIL: dict[str, str] = {}


def _scenarios() -> list[dict[str, Any]]:
    with SUITE.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


SCENARIOS = _scenarios()
CASES = [(i, name) for i, doc in enumerate(SCENARIOS) for name in doc["tests"]]


def zone_of(zonedata: dict[str, list[Any]]) -> tuple[dict[str, list[tuple[str, Any]]],
                                                       set[tuple[str, str]]]:
    """The suite's zonedata as (zone for DnsTestServer, (name, type) pairs that time out)."""
    zone: dict[str, list[tuple[str, Any]]] = {}
    timeouts: set[tuple[str, str]] = set()
    for owner, entries in zonedata.items():
        records: list[tuple[str, Any]] = []
        spf_values: list[Any] = []
        has_txt = False
        timeout = False
        for entry in entries:
            if entry == "TIMEOUT":
                timeout = True
                continue
            ((rtype, value),) = entry.items()
            if rtype == "TXT":
                has_txt = True
            if value == "NONE":
                continue
            if rtype == "SPF":
                spf_values.append(value)
            records.append((rtype, value))
        if not has_txt:
            records.extend(("TXT", v) for v in spf_values)
        zone[owner] = records
        if timeout:
            present = {rtype for rtype, _ in records}
            timeouts |= {(owner.lower().rstrip("."), t) for t in _TYPES if t not in present}
    return zone, timeouts


@pytest.fixture(scope="module")
def server() -> Iterator[DnsTestServer]:
    with DnsTestServer() as srv:
        yield srv


_loaded: dict[str, int] = {"scenario": -1}
_outcomes: dict[tuple[int, str], bool] = {}


async def run_case(server: DnsTestServer, index: int, name: str) -> tuple[bool, str]:
    doc = SCENARIOS[index]
    if _loaded["scenario"] != index:
        zone, timeouts = zone_of(doc["zonedata"])
        server.set_zone(zone)
        server.drop.update(timeouts)
        _loaded["scenario"] = index
    test = doc["tests"][name]
    # A fresh resolver per test: no cache carried between tests; short timeouts for TIMEOUT.
    resolver = Resolver(DnsConfig(nameservers=("127.0.0.1",), port=server.port,
                                  timeout=0.5, lifetime=0.5))
    args = (resolver, str(test["host"]), str(test.get("mailfrom") or ""), str(test.get("helo") or ""))
    try:
        res = await check_spf(*args, default_explanation="DEFAULT")
        # Again on the same resolver: its cache now holds what the check asked for, so pyspf
        # runs on the loop from the cache alone (Resolver.run_cached_first) and must agree.
        again = await check_spf(*args, default_explanation="DEFAULT")
    finally:
        resolver.close()
    expected = test["result"]
    allowed = expected if isinstance(expected, list) else [expected]
    ok = res.result in allowed and again == res
    why = (f"got {res.result} ({res.explanation}), want {allowed}" if again == res
           else f"from the cache {again}, first {res}")
    if ok and "explanation" in test:
        ok = res.explanation == test["explanation"]
        why = f"explanation {res.explanation!r} != {test['explanation']!r}"
    _outcomes[(index, name)] = ok
    return ok, why


def _params() -> list[Any]:
    params = []
    for index, name in CASES:
        marks = [pytest.mark.xfail(reason=XFAIL[name], strict=True)] if name in XFAIL else []
        params.append(pytest.param(index, name, id=f"{index}-{name}", marks=marks))
    return params


@pytest.mark.parametrize(("index", "name"), _params())
async def test_rfc7208(server: DnsTestServer, index: int, name: str) -> None:
    ok, why = await run_case(server, index, name)
    assert ok, f"{SCENARIOS[index]['description']} / {name}: {why}"


async def test_rfc7208_count(server: DnsTestServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole suite's pass count (reuses the per-test outcomes; runs any not yet run)."""
    assert len(CASES) == TOTAL
    for index, name in CASES:
        if (index, name) not in _outcomes:
            await run_case(server, index, name)
    passed = sum(_outcomes[c] for c in CASES)
    with capsys.disabled():
        print(f"\nSPF RFC 7208 suite: {passed}/{TOTAL} passed "
              f"({len(XFAIL)} known failures listed)")
    assert passed == TOTAL - len(XFAIL)
