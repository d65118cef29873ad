"""Decisions over time: hourly buckets, totals and a small inline SVG chart, rendered server-side.

The time axis is labelled in the listener's local time zone, and the zone is named under the
chart (an operator comparing it with a log must know which clock it shows).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Sequence

from scattergate.state.store import DecisionRecord
from scattergate.web.findings import backscatter_keys

REFUSED = ("reject", "tempfail")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    color: str
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Totals:
    """What the decisions in a window add up to."""

    accepted: int = 0
    refused: int = 0
    quarantined: int = 0
    backscatter_refused: int = 0
    backscatter_quarantined: int = 0

    @property
    def backscatter_stopped(self) -> int:
        return self.backscatter_refused + self.backscatter_quarantined


def hour_starts(now: float, hours: int) -> list[float]:
    """The starts of the last `hours` whole hours, oldest first (the last one is running)."""
    current = now - now % 3600
    return [current - 3600 * i for i in range(hours - 1, -1, -1)]


def bucket(times: Sequence[float], starts: Sequence[float]) -> tuple[int, ...]:
    counts = [0] * len(starts)
    for when in times:
        index = int((when - starts[0]) // 3600)
        if 0 <= index < len(starts):
            counts[index] += 1
    return tuple(counts)


def backscatter_outcome(record: DecisionRecord) -> str:
    """"refused" or "quarantined" when backscatter was stopped by this decision, else ""."""
    if record.verdict not in ("reject", "quarantine") or not backscatter_keys(record.findings):
        return ""
    return "refused" if record.verdict == "reject" else "quarantined"


def totals(records: Sequence[DecisionRecord], since: float) -> Totals:
    verdicts = {"accept": 0, "refused": 0, "quarantine": 0}
    backscatter = {"refused": 0, "quarantined": 0}
    for record in records:
        if record.time < since:
            continue
        verdict = "refused" if record.verdict in REFUSED else record.verdict
        if verdict in verdicts:
            verdicts[verdict] += 1
        outcome = backscatter_outcome(record)
        if outcome:
            backscatter[outcome] += 1
    return Totals(verdicts["accept"], verdicts["refused"], verdicts["quarantine"],
                  backscatter["refused"], backscatter["quarantined"])


def decision_series(records: Sequence[DecisionRecord], starts: Sequence[float]) -> list[Series]:
    def times(keep) -> list[float]:  # type: ignore[no-untyped-def]
        return [r.time for r in records if keep(r)]

    return [
        Series("accepted", "#27ae60", bucket(times(lambda r: r.verdict == "accept"), starts)),
        Series("refused in dialogue", "#c0392b", bucket(times(lambda r: r.verdict in REFUSED), starts)),
        Series("quarantined", "#2980b9", bucket(times(lambda r: r.verdict == "quarantine"), starts)),
        Series("backscatter stopped", "#8e44ad", bucket(times(backscatter_outcome), starts)),
    ]


def zone_name(when: float) -> str:
    """The local time zone as people and logs name it: "CET, UTC+01:00"."""
    offset = time.strftime("%z", time.localtime(when))
    return f"{time.strftime('%Z', time.localtime(when))}, UTC{offset[:3]}:{offset[3:]}"


class CounterSamples:
    """Cumulative counters sampled over time, to chart what is only kept as a total (DSNs)."""

    def __init__(self, keep: float = 24 * 3600) -> None:
        self.keep = keep
        self.samples: list[tuple[float, dict[str, int]]] = []

    def add(self, counters: dict[str, int], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.samples.append((now, counters))
        while self.samples and self.samples[0][0] < now - self.keep:
            self.samples.pop(0)

    def series(self, name: str, starts: Sequence[float]) -> tuple[int, ...]:
        """Increments of the counter `name` (and its `name.*` kinds), in the bucket of the later sample."""
        counts = [0] * len(starts)
        for (_, before), (when, after) in zip(self.samples, self.samples[1:]):
            delta = counter_total(after, name) - counter_total(before, name)
            index = int((when - starts[0]) // 3600)
            if delta > 0 and 0 <= index < len(starts):
                counts[index] += delta
        return tuple(counts)


def counter_total(counters: dict[str, int], name: str) -> int:
    """The counter `name` plus its kinds `name.*` ("dsn.suppressed" and "dsn.suppressed.failure")."""
    return sum(v for k, v in counters.items() if k == name or k.startswith(name + "."))


def svg_chart(title: str, starts: Sequence[float], series: Sequence[Series], *, width: int = 720,
              height: int = 220) -> str:
    """Grouped bars, one group per hour: small counts stay readable (lines of equal small
    values would lie on top of one another)."""
    left, right, top, bottom = 40, 10, 40, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(v for s in series for v in s.values)])
    slot = plot_w / max(1, len(starts))
    bar = slot / (len(series) + 1)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        (f'<svg class="chart" role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" '
         f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'),
        f'<title>{html.escape(title)}</title>',
        f'<text x="{left}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for fraction in (0, 0.5, 1):  # horizontal grid with the count it stands for
        value = peak * fraction
        label = f"{value:g}" if value == int(value) else f"{value:.1f}"
        parts.append(f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot_w}" y2="{y(value):.1f}" '
                     f'stroke="{"#999" if fraction == 0 else "#e4e4e4"}"/>')
        parts.append(f'<text x="{left - 4}" y="{y(value) + 3:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for i in range(0, len(starts), 3):
        local = time.localtime(starts[i])
        x = left + slot * i
        parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#999"/>')
        parts.append(f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 15}" font-size="10" '
                     f'text-anchor="middle">{time.strftime("%H:00", local)}</text>')
        if i == 0 or local.tm_hour < 3:  # the date where a day starts
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 27}" font-size="9" fill="#666" '
                         f'text-anchor="middle">{time.strftime("%b %d", local)}</text>')
    if starts:
        parts.append(f'<text class="zone" x="{left + plot_w}" y="{height - 2}" font-size="10" fill="#666" '
                     f'text-anchor="end">hour starting, {html.escape(zone_name(starts[-1]))}</text>')
    legend_x = left
    for k, s in enumerate(series):
        for i, v in enumerate(s.values):
            if v:
                hour = time.strftime("%H:00", time.localtime(starts[i]))
                parts.append(f'<rect x="{left + slot * i + bar * (k + 0.5):.1f}" y="{y(v):.1f}" width="{bar:.1f}" '
                             f'height="{top + plot_h - y(v):.1f}" fill="{s.color}">'
                             f"<title>{html.escape(s.name)}, {hour}: {v}</title></rect>")
        label = f"{s.name} ({sum(s.values)})"
        parts.append(f'<rect x="{legend_x}" y="22" width="10" height="10" fill="{s.color}"/>'
                     f'<text x="{legend_x + 14}" y="31" font-size="11">{html.escape(label)}</text>')
        legend_x += 24 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)
