"""The state-store contract: the same tests against SQLite and a real Redis.

Whatever a gateway writes through one backend it must read back the same way through the
other, so switching `[state] backend` never changes a decision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from scattergate.config import Config
from scattergate.state.factory import open_store
from scattergate.state.store import DecisionRecord, QuarantineItem, StateStore
from scattergate.config_check import validate
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)

StoreFactory = Callable[..., StateStore]


def _config(tmp_path: Path, backend: str, url: str = "", keep: int = 100_000) -> Config:
    config = Config()
    config.state.data_dir = str(tmp_path / "data")
    config.state.backend = backend
    config.state.redis_url = url
    config.state.keep_decisions = keep
    validate(config)
    return config


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Stores of one backend; with Redis, every store of a test shares one server."""
    opened: list[StateStore] = []
    url = ""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")()
        url = server.url

    def make(keep: int = 100_000) -> StateStore:
        store = open_store(_config(tmp_path, request.param, url, keep))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def decision(n: int, **overrides: object) -> DecisionRecord:
    values: dict[str, object] = dict(
        time=1_700_000_000.0 + n, session=f"s{n}", client="192.0.2.7", helo="mta.example",
        sender="a@example.net", recipients=("x@example.org", "y@example.org"), phase="data",
        verdict="reject", reply="550 5.7.1 no", findings=("backscatter.unsolicited[kind=dsn]",),
    )
    values.update(overrides)
    return DecisionRecord(**values)  # type: ignore[arg-type]


def held(tmp_path: Path, item_id: str, when: float, *, sender: str = "s@example.net",
         recipients: tuple[str, ...] = ("r@example.org",), reason: str = "policy",
         content: bytes = b"Subject: held\r\n\r\nbody\r\n") -> QuarantineItem:
    path = tmp_path / f"{item_id}.eml"
    path.write_bytes(content)
    return QuarantineItem(item_id, when, sender, recipients, reason, len(content), str(path))


# -- counters and decisions ------------------------------------------------------------------

def test_counters_add_up_across_batches(make_store: StoreFactory) -> None:
    store = make_store()
    assert store.counters() == {}
    store.add({"sessions": 2, "decisions.rcpt.reject": 1}, [])
    store.add({"sessions": 3}, [])
    store.add({}, [])  # an empty flush changes nothing
    assert store.counters() == {"decisions.rcpt.reject": 1, "sessions": 5}


def test_decisions_round_trip_newest_first(make_store: StoreFactory) -> None:
    store = make_store()
    store.add({}, [decision(1), decision(2, recipients=(), findings=())])
    store.add({}, [decision(3, sender="", helo="")])
    got = store.recent_decisions()
    assert [d.session for d in got] == ["s3", "s2", "s1"]
    assert got[2] == decision(1)
    assert got[1].recipients == () and got[1].findings == ()
    assert [d.session for d in store.recent_decisions(limit=2)] == ["s3", "s2"]


def test_decision_history_is_capped(make_store: StoreFactory) -> None:
    store = make_store(keep=3)
    store.add({}, [decision(n) for n in range(5)])
    store.add({}, [decision(5)])
    assert [d.session for d in store.recent_decisions()] == ["s5", "s4", "s3"]


def test_two_stores_on_the_same_state_see_each_others_writes(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    first.add({"sessions": 1}, [decision(1)])
    second.add({"sessions": 2}, [decision(2)])
    assert first.counters() == second.counters() == {"sessions": 3}
    assert [d.session for d in first.recent_decisions()] == ["s2", "s1"]


# Bytes that were not UTF-8, as the milter and policy front ends carry them (surrogateescape).
NOT_UTF8 = b"\xff\xfe".decode("utf-8", "surrogateescape")


def test_one_undecodable_record_loses_nothing_else(make_store: StoreFactory) -> None:
    """Fuzzing stored 1,992 of ~5,600 decisions: one bad field failed the whole flush, with the
    decisions and counters of unrelated clients in it. Now every record is kept, escaped."""
    store = make_store()
    bad = decision(2, helo=f"h{NOT_UTF8}.example", sender=f"a{NOT_UTF8}@example.net",
                   recipients=(f"r{NOT_UTF8}@example.org",), reply=f"550 {NOT_UTF8}",
                   findings=(f"helo.invalid[{NOT_UTF8}]",))
    store.add({"sessions": 3, f"findings.x{NOT_UTF8}": 1}, [decision(1), bad, decision(3)])
    got = {d.session: d for d in store.recent_decisions()}
    assert sorted(got) == ["s1", "s2", "s3"]
    assert got["s1"] == decision(1) and got["s3"] == decision(3)
    escaped = got["s2"]
    assert escaped.helo == "h\\xff\\xfe.example" and escaped.sender == "a\\xff\\xfe@example.net"
    assert escaped.recipients == ("r\\xff\\xfe@example.org",) and escaped.reply == "550 \\xff\\xfe"
    assert escaped.findings == ("helo.invalid[\\xff\\xfe]",)
    assert store.counters() == {"sessions": 3, "findings.x\\xff\\xfe": 1}


def test_a_record_with_missing_or_unusable_fields_is_kept_or_left_out_alone(make_store: StoreFactory) -> None:
    store = make_store()
    store.add({"sessions": 3}, [decision(1), decision(2, helo=None, sender=None), decision(3, time="not a time"),
                                decision(4)])
    got = {d.session: d for d in store.recent_decisions()}
    assert sorted(got) == ["s1", "s2", "s4"]  # s3 cannot be stored at all: only s3 is lost
    assert got["s2"].helo == "" and got["s2"].sender == ""
    assert store.counters() == {"sessions": 3}


def test_undecodable_quarantine_and_sent_fields_are_kept_escaped(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    store.quarantine_add(held(tmp_path, "q1", 1.0, sender=f"s{NOT_UTF8}@example.net",
                              recipients=(f"r{NOT_UTF8}@example.org",), reason=f"policy {NOT_UTF8}"))
    item = store.quarantine_get("q1")
    assert item is not None and item.sender == "s\\xff\\xfe@example.net"
    assert item.recipients == ("r\\xff\\xfe@example.org",) and item.reason == "policy \\xff\\xfe"
    store.sent_add("h1", f"me{NOT_UTF8}@example.org", 10.0, 3600)
    assert store.sent_lookup("h1", 0.0) == "me\\xff\\xfe@example.org"


# -- quarantine ------------------------------------------------------------------------------

def test_quarantine_add_get_list_remove(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    older = held(tmp_path, "q1", 100.0, sender="spam@bad.example", reason="backscatter.unsolicited")
    newer = held(tmp_path, "q2", 200.0, recipients=("alice@example.org", "bob@example.org"))
    store.quarantine_add(older)
    store.quarantine_add(newer)
    assert store.quarantine_list() == [newer, older]
    assert store.quarantine_list(limit=1) == [newer]
    assert store.quarantine_get("q1") == older
    assert store.quarantine_get("nope") is None
    store.quarantine_remove("q1")
    assert store.quarantine_list() == [newer]
    assert store.quarantine_get("q1") is None
    store.quarantine_remove("q1")  # removing twice is harmless


@pytest.mark.parametrize("search, expected", [
    ("BAD.example", ["q1"]),          # sender, case-insensitive
    ("bob@", ["q2"]),                 # any recipient
    ("unsolicited", ["q1"]),          # reason
    ("q2", ["q2"]),                   # id
    ("", ["q3", "q2", "q1"]),
    ("nothing-like-it", []),
])
def test_quarantine_search(make_store: StoreFactory, tmp_path: Path, search: str, expected: list[str]) -> None:
    store = make_store()
    store.quarantine_add(held(tmp_path, "q1", 1.0, sender="spam@bad.example", reason="backscatter.unsolicited"))
    store.quarantine_add(held(tmp_path, "q2", 2.0, recipients=("alice@example.org", "bob@example.org")))
    store.quarantine_add(held(tmp_path, "q3", 3.0))
    assert [i.id for i in store.quarantine_list(search=search)] == expected


def test_quarantine_search_respects_the_limit(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store()
    for n in range(7):
        store.quarantine_add(held(tmp_path, f"q{n}", float(n), reason="match" if n % 2 else "other"))
    assert [i.id for i in store.quarantine_list(limit=2, search="match")] == ["q5", "q3"]


# -- sent-message registry -------------------------------------------------------------------

def test_sent_registry_lookup_within_the_window(make_store: StoreFactory) -> None:
    store = make_store()
    now = 1_700_000_000.0
    store.sent_add("h1", "alice@example.org", now, 8 * 86400)
    assert store.sent_lookup("h1", since=now - 8 * 86400) == "alice@example.org"
    assert store.sent_lookup("h1", since=now) == "alice@example.org"
    assert store.sent_lookup("h1", since=now + 1) is None  # sent before the window began
    assert store.sent_lookup("unknown", since=0) is None


def test_sent_registry_keeps_the_latest_sender(make_store: StoreFactory) -> None:
    store = make_store()
    store.sent_add("h1", "alice@example.org", 10.0, 3600)
    store.sent_add("h1", '"odd name"@example.org', 20.0, 3600)
    assert store.sent_lookup("h1", since=15.0) == '"odd name"@example.org'


def test_sent_registry_is_shared(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    first.sent_add("h1", "alice@example.org", 10.0, 3600)
    assert second.sent_lookup("h1", since=0) == "alice@example.org"


# -- rate-limit counters ---------------------------------------------------------------------

def test_hits_count_per_key_within_the_window(make_store: StoreFactory) -> None:
    store = make_store()
    assert [store.hit(["m:192.0.2.7"], 3600) for _ in range(3)] == [[1], [2], [3]]
    assert store.hit(["m:192.0.2.8"], 3600) == [1]  # keys count apart
    assert store.hit(["m:192.0.2.7"], 3600, amount=5) == [8]


def test_one_hit_counts_several_keys_in_order(make_store: StoreFactory) -> None:
    store = make_store()
    store.hit(["r:example.net"], 3600, amount=4)
    assert store.hit(["m:192.0.2.7", "r:example.net"], 3600) == [1, 5]
    assert store.hit([], 3600) == []


def test_hits_are_shared_and_atomic_across_stores(make_store: StoreFactory) -> None:
    """Two gateways (or two workers) on one state: no count is lost or given out twice."""
    import threading

    stores = [make_store(), make_store()]
    seen: list[int] = []
    lock = threading.Lock()

    def hammer(store: StateStore) -> None:
        for _ in range(100):
            (count,) = store.hit(["c:198.51.100.1"], 3600)
            with lock:
                seen.append(count)

    threads = [threading.Thread(target=hammer, args=(stores[n % 2],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(seen) == list(range(1, 401))
    assert stores[0].hit(["c:198.51.100.1"], 3600) == [401]
