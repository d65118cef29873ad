"""Adding up the workers' metric sample files while another worker is still creating its own."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict

from scattergate.web.metrics import WorkerSamples


def write_counter(directory: Path, pid: int, value: float) -> None:
    """A counter sample file as a worker process writes it (prometheus-client's own format)."""
    samples = MmapedDict(str(directory / f"counter_{pid}.db"))
    key = json.dumps(["scattergate_sessions", "scattergate_sessions_total", {}, "SMTP sessions opened"])
    samples.write_value(key, value, 0.0)
    samples.close()


def test_a_sample_file_still_empty_is_skipped_not_fatal(tmp_path: Path) -> None:
    write_counter(tmp_path, 101, 3)
    write_counter(tmp_path, 102, 4)
    (tmp_path / "counter_103.db").touch()  # a worker between creating its file and sizing it
    registry = CollectorRegistry(auto_describe=True)  # registering reads every file at once
    WorkerSamples(str(tmp_path), registry)
    exposition = generate_latest(registry).decode()
    assert "scattergate_sessions_total 7.0" in exposition
