"""Dashboard totals: what counts as accepted, refused, quarantined and backscatter stopped."""

from __future__ import annotations

from scattergate.state.store import DecisionRecord
from scattergate.web import charts


def record(verdict: str, *findings: str, when: float = 1000.0) -> DecisionRecord:
    return DecisionRecord(when, "s1", "192.0.2.1", "h", "", ("u@example.org",), "data", verdict, "", findings)


def test_quarantined_backscatter_counts_as_stopped_and_tagged_does_not() -> None:
    records = [
        record("reject", "backscatter.unsolicited[kind=dsn]"),
        record("quarantine", "batv.missing", "backscatter.unsolicited[kind=dsn]"),  # one message, once
        record("accept", "backscatter.unsolicited[kind=dsn]"),  # mode "tag": let through, marked
        record("tempfail", "clamav.timeout"),
        record("accept", "delivery.relayed"),
        record("reject", "relay.denied", when=10.0),  # before the window
    ]
    totals = charts.totals(records, since=500.0)
    assert (totals.accepted, totals.refused, totals.quarantined) == (2, 2, 1)
    assert (totals.backscatter_refused, totals.backscatter_quarantined, totals.backscatter_stopped) == (1, 1, 2)


def test_a_counter_total_takes_the_bare_name_and_its_kinds_only() -> None:
    counters = {"dsn.suppressed": 2, "dsn.suppressed.failure": 3, "dsn.suppressed_other": 50, "dsn.sent.failure": 7}
    assert charts.counter_total(counters, "dsn.suppressed") == 5


def test_hourly_buckets_and_the_zone_on_the_axis() -> None:
    starts = charts.hour_starts(7200 * 12 + 1800, 3)
    assert starts == [7200 * 12 - 7200, 7200 * 12 - 3600, 7200 * 12]
    assert charts.bucket([starts[0] + 1, starts[2] + 10, starts[2] + 20, starts[0] - 1], starts) == (1, 0, 2)
    svg = charts.svg_chart("t", starts, [charts.Series("a", "#000", (1, 0, 2))])
    assert charts.zone_name(starts[-1]) in svg and "a (3)" in svg
