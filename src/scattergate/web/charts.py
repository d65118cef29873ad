"""Decisions over time: hourly buckets and a small inline SVG line chart, rendered server-side."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Sequence

from scattergate.state.store import DecisionRecord

BACKSCATTER_KEYS = ("backscatter.unsolicited", "backscatter.multiple_recipients",
                    "batv.missing", "batv.bad_tag", "batv.invalid", "batv.unsigned")


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    color: str
    values: tuple[int, ...]


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


def is_backscatter_refusal(record: DecisionRecord) -> bool:
    return record.verdict == "reject" and any(f.startswith(BACKSCATTER_KEYS) for f in record.findings)


def decision_series(records: Sequence[DecisionRecord], starts: Sequence[float]) -> list[Series]:
    refused = [r.time for r in records if r.verdict in ("reject", "tempfail")]
    backscatter = [r.time for r in records if is_backscatter_refusal(r)]
    return [
        Series("refused in dialogue", "#c0392b", bucket(refused, starts)),
        Series("backscatter refused", "#8e44ad", bucket(backscatter, starts)),
    ]


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

    def series(self, prefix: str, starts: Sequence[float]) -> tuple[int, ...]:
        """Increments of the counters under `prefix`, put in the bucket of the later sample."""
        counts = [0] * len(starts)
        for (_, before), (when, after) in zip(self.samples, self.samples[1:]):
            delta = _total(after, prefix) - _total(before, prefix)
            index = int((when - starts[0]) // 3600)
            if delta > 0 and 0 <= index < len(starts):
                counts[index] += delta
        return tuple(counts)


def _total(counters: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in counters.items() if k.startswith(prefix))


def svg_chart(title: str, starts: Sequence[float], series: Sequence[Series], *, width: int = 640,
              height: int = 180) -> str:
    left, right, top, bottom = 36, 8, 24, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1, *(v for s in series for v in s.values)])
    n = max(1, len(starts) - 1)

    def x(i: int) -> float:
        return left + plot_w * i / n

    def y(v: int) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        (f'<svg class="chart" role="img" aria-label="{html.escape(title)}" viewBox="0 0 {width} {height}" '
         f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'),
        f'<title>{html.escape(title)}</title>',
        f'<text x="{left}" y="14" font-size="13" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>',
    ]
    for i in range(0, len(starts), 6):
        label = time.strftime("%H:00", time.localtime(starts[i]))
        parts.append(f'<text x="{x(i):.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{label}</text>')
    legend_x = left + plot_w
    for s in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s.values))
        parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2" points="{points}">'
                     f'<title>{html.escape(s.name)}: {sum(s.values)}</title></polyline>')
        label = f"{s.name} ({sum(s.values)})"
        parts.append(f'<text x="{legend_x}" y="14" font-size="11" text-anchor="end" fill="{s.color}">'
                     f'{html.escape(label)}</text>')
        legend_x -= 8 + 6 * len(label)
    parts.append("</svg>")
    return "".join(parts)
