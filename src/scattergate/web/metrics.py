"""Prometheus metrics, fed by the decision recorder's observer hook.

Every decision and counter increment already goes through `DecisionRecorder`; observing it
there keeps metric calls out of the checks and the pipeline. Check latencies are measured by
wrapping the gateway's remote checks (the ones with I/O and budgets) as assembly.py builds
them; local checks take microseconds and are not timed. Queue depth and quarantine size are read from disk at scrape
time, so they are right whichever worker answers.

With several worker processes, prometheus-client's multiprocess mode is used (see
`web/service.py:prepare`): each worker writes its samples to files under
`<data_dir>/metrics/`, and whichever worker answers a scrape adds them all up. Per-process
metrics would be wrong there, because the HTTP port is shared with SO_REUSEPORT and a scrape
lands on any one worker.
"""

from __future__ import annotations

import glob
import os
import re
import time
from pathlib import Path
from typing import Iterable, Iterator

import platform

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from scattergate import __version__
from scattergate.checks import CheckContext, RemoteCheck, RemoteRun
from scattergate.model import Verdict
from scattergate.state.store import DecisionRecord
from scattergate.web.findings import BACKSCATTER_FINDINGS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the name prometheus-client reads
CONTENT_TYPE = CONTENT_TYPE_LATEST
# A bare "dsn.suppressed" (no kind) is the milter asking Postfix for NOTIFY=NEVER.
NOTIFY_NEVER_KIND = "notify_never"

# `<counter>_created` doubles the series of every counter and histogram for a timestamp
# Prometheus does not need (it detects resets itself); nobody graphs it.
disable_created_metrics()
_DETAIL_FIELD = re.compile(r"\b(kind|evidence)=([\w-]+)")
# The findings whose detail decided() reads (the backscatter counters' labels).
_DETAILED_FINDINGS = frozenset(BACKSCATTER_FINDINGS) | {"backscatter.solicited"}
# Seconds; from a cached DNS answer to a scanner near its budget.
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class _KnownPid:
    """This process's pid, kept rather than asked for: prometheus-client's multiprocess values
    call their process identifier at every inc and observe to notice a fork (about forty
    getpid() system calls a message). A forked child refreshes it, so it tells the same."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._refresh)

    def _refresh(self) -> None:
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


_known_pid: _KnownPid | None = None


def _multiprocess_values_with_known_pid() -> None:
    """Make the metrics created from now on use the kept pid (see _KnownPid); once a process."""
    global _known_pid
    if _known_pid is None:
        _known_pid = _KnownPid()
        values.ValueClass = values.MultiProcessValue(process_identifier=_known_pid)


class WorkerSamples(multiprocess.MultiProcessCollector):
    """Every worker's sample files added up, as prometheus-client does it, minus the files a
    worker is creating at that moment: they are empty until prometheus-client sizes them, and
    reading one raised struct.error. Registering the collector reads them all, so two workers
    starting together could kill one another (seen in a benchmark: `serve` stopped)."""

    def __init__(self, path: str, registry: CollectorRegistry) -> None:
        self._directory = path
        super().__init__(registry, path)

    def collect(self) -> Iterable[Metric]:
        files = []
        for name in glob.glob(os.path.join(self._directory, "*.db")):
            try:
                if os.path.getsize(name) > 0:
                    files.append(name)
            except FileNotFoundError:  # a dead worker's file, removed meanwhile
                pass
        return self.merge(files, accumulate=True)


class DiskCollector(Collector):
    """Queue depth and quarantine size, counted on disk at scrape time."""

    def __init__(self, spool_dir: Path, quarantine_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.quarantine_dir = quarantine_dir

    def collect(self) -> Iterable[Metric]:
        queued = sum(1 for _ in _files(self.spool_dir, ".msg"))
        held = [p.stat().st_size for p in _files(self.quarantine_dir, ".eml")]
        yield GaugeMetricFamily("scattergate_queue_messages", "Messages in the store-and-forward spool", value=queued)
        yield GaugeMetricFamily("scattergate_quarantine_messages", "Messages held in the quarantine", value=len(held))
        yield GaugeMetricFamily("scattergate_quarantine_bytes", "Bytes held in the quarantine", value=sum(held))


class BuildInfo(Collector):
    """`scattergate_build_info{version, python} 1`: which release answers (for dashboards
    and for spotting a half-upgraded fleet)."""

    def collect(self) -> Iterable[Metric]:
        info = InfoMetricFamily("scattergate_build", "The scattergate release and the Python running it")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info


class WorkerProcesses(Collector):
    """The standard `process_*` metrics for `serve --workers N` as one gateway: the parent and
    its workers added up (CPU, memory, open files), the parent's start time. A scrape lands
    on any one worker, whose own numbers would jump between scrapes."""

    SUMMED = ("process_cpu_seconds", "process_resident_memory_bytes", "process_virtual_memory_bytes",
              "process_open_fds", "process_max_fds")

    def __init__(self, parent: int, proc: str = "/proc") -> None:
        self.parent = parent
        self.proc = proc

    def pids(self) -> list[int]:
        children = []
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            try:
                with open(os.path.join(entry.path, "stat"), "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            if ppid == self.parent:
                children.append(int(entry.name))
        return [self.parent, *sorted(children)]

    def collect(self) -> Iterable[Metric]:
        sums: dict[str, float] = {}
        helps: dict[str, str] = {}
        start = 0.0
        for pid in self.pids():
            for family in ProcessCollector(pid=lambda pid=pid: pid, proc=self.proc, registry=None).collect():
                helps[family.name] = family.documentation
                value = family.samples[0].value
                if family.name == "process_start_time_seconds":
                    start = value if pid == self.parent else start or value
                else:
                    sums[family.name] = sums.get(family.name, 0.0) + value
        if start:
            yield GaugeMetricFamily("process_start_time_seconds", helps["process_start_time_seconds"], value=start)
        for name, value in sums.items():
            if name == "process_cpu_seconds":
                yield CounterMetricFamily(name, helps[name] + " (parent and workers)", value=value)
            else:
                yield GaugeMetricFamily(name, helps[name] + " (parent and workers)", value=value)


def _files(directory: Path, suffix: str) -> Iterator[Path]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(suffix) and not entry.name.startswith("."):
            yield Path(entry.path)


class Metrics:
    """The gateway's metrics; also a `DecisionObserver` (decision/record.py)."""

    def __init__(self, spool_dir: Path, quarantine_dir: Path) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._decision_children: dict[tuple[str, str], "Counter"] = {}
        self._reason_children: dict[tuple[str, str], "Counter"] = {}
        self._counted_children: dict[str, "Counter"] = {}  # counted(): the child per counter name
        self.multiprocess = multiprocess_enabled()
        # In multiprocess mode the samples go to files; the registry reads them all back.
        own = None if self.multiprocess else self.registry
        if self.multiprocess:
            _multiprocess_values_with_known_pid()
        self.sessions = Counter("scattergate_sessions", "SMTP sessions opened", registry=own)
        self.decisions = Counter("scattergate_decisions", "Decisions by SMTP phase and verdict",
                                 ["phase", "verdict"], registry=own)
        self.reasons = Counter("scattergate_decision_findings", "Findings behind decisions, by verdict and finding key",
                               ["verdict", "finding"], registry=own)
        self.dsn_sent = Counter("scattergate_dsn_sent", "DSNs sent (safe-bounce rule passed), by kind",
                                ["kind"], registry=own)
        self.dsn_suppressed = Counter("scattergate_dsn_suppressed", "DSNs not sent (safe-bounce rule), by kind",
                                      ["kind"], registry=own)
        self.backscatter_refused = Counter(
            "scattergate_backscatter_refused", "Bounces/auto-replies refused: the finding and the classifier's kind",
            ["finding", "kind"], registry=own)
        self.backscatter_quarantined = Counter(
            "scattergate_backscatter_quarantined",
            "Bounces/auto-replies held in the quarantine (backscatter.mode = quarantine), by finding and kind",
            ["finding", "kind"], registry=own)
        self.backscatter_accepted = Counter(
            "scattergate_backscatter_accepted", "Bounces/auto-replies accepted, by the evidence they refer to our mail",
            ["evidence"], registry=own)
        self.spool = Counter("scattergate_spool_messages", "Spool events: queued, delivered, failed",
                             ["event"], registry=own)
        self.check_seconds = Histogram("scattergate_check_duration_seconds", "Time taken by each remote check",
                                       ["check"], buckets=_LATENCY_BUCKETS, registry=own)
        if self.multiprocess:
            WorkerSamples(os.environ[MULTIPROC_ENV], self.registry)
            self.registry.register(WorkerProcesses(os.getppid()))
        else:
            ProcessCollector(registry=self.registry)
        self.registry.register(BuildInfo())
        self.registry.register(DiskCollector(spool_dir, quarantine_dir))

    # -- DecisionObserver ------------------------------------------------------------------

    def decided(self, record: DecisionRecord, verdict: Verdict) -> None:
        # Every decision asks: children looked up in our own dicts (prometheus' labels()
        # takes a lock and re-validates the labels on each call). Label values come from
        # fixed sets (phases, verdicts, finding keys), so the dicts stay small.
        key = (record.phase, record.verdict)
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()
        for finding in verdict.findings:
            key = (record.verdict, finding.key)
            child = self._reason_children.get(key)
            if child is None:
                child = self._reason_children[key] = self.reasons.labels(*key)
            child.inc()
            if finding.key not in _DETAILED_FINDINGS:
                continue  # the detail's kind=/evidence= fields matter only to the backscatter counters
            fields = dict(_DETAIL_FIELD.findall(finding.detail))
            if finding.key in BACKSCATTER_FINDINGS and record.verdict == "reject":
                self.backscatter_refused.labels(finding.key, fields.get("kind", "-")).inc()
            elif finding.key in BACKSCATTER_FINDINGS and record.verdict == "quarantine":
                self.backscatter_quarantined.labels(finding.key, fields.get("kind", "-")).inc()
            elif finding.key == "backscatter.solicited" and record.verdict == "accept":
                self.backscatter_accepted.labels(fields.get("evidence", "-")).inc()

    def counted(self, name: str, amount: int) -> None:
        if name == "sessions":
            self.sessions.inc(amount)
            return
        # Every message of the milter counts "dsn.suppressed": the labelled child looked up
        # once per name (labels() takes a lock and re-validates on each call).
        child = self._counted_children.get(name)
        if child is None:
            child = self._counted_child(name)
            if child is None:
                return
            self._counted_children[name] = child
        child.inc(amount)

    def _counted_child(self, name: str) -> "Counter | None":
        group, _, rest = name.partition(".")
        if group == "dsn":
            outcome, _, kind = rest.partition(".")
            kind = kind or NOTIFY_NEVER_KIND
            if outcome == "sent":
                return self.dsn_sent.labels(kind)
            if outcome == "suppressed":
                return self.dsn_suppressed.labels(kind)
        elif group == "spool":
            return self.spool.labels(rest)
        # decisions.* and findings.* are never passed here: decided() sees them with their verdict.
        return None

    # -- checks and exposition -------------------------------------------------------------

    def instrument(self, check: RemoteCheck) -> RemoteCheck:
        """`check`, timed: what assembly.py builds the remote checks with when metrics are on."""
        return RemoteCheck(check.name, self._timed(check.name, check.run), check.budget)

    def _timed(self, name: str, run: RemoteRun) -> RemoteRun:
        histogram = self.check_seconds.labels(name)

        async def timed(ctx: CheckContext):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return await run(ctx)
            finally:  # also when the budget cancels it: a timeout is a latency too
                histogram.observe(time.perf_counter() - start)

        return timed

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
