"""Who may empty `<data_dir>/metrics`: only a multi-process `serve` starting up, never a
one-process milter or policy service that shares the data directory with it."""

from __future__ import annotations

import pytest

from scattergate.web import service
from scattergate.web.metrics import MULTIPROC_ENV


@pytest.fixture
def samples(make_config, monkeypatch):  # type: ignore[no-untyped-def]
    # setenv first, so that monkeypatch restores "unset" afterwards: prepare() sets it.
    monkeypatch.setenv(MULTIPROC_ENV, "")
    monkeypatch.delenv(MULTIPROC_ENV)
    config = make_config(server={"workers": 2}, http={"listen": "127.0.0.1:0"})
    live = config.data_dir / "metrics" / "counter_123.db"  # a running serve's worker samples
    live.parent.mkdir(parents=True)
    live.write_bytes(b"samples")
    return config, live


def test_a_one_process_service_leaves_the_live_samples_alone(samples) -> None:  # type: ignore[no-untyped-def]
    config, live = samples
    setup = service.prepare(config, processes=1)
    assert setup is not None and not setup.reuse_port
    assert live.read_bytes() == b"samples"


def test_a_multi_worker_serve_starts_from_an_empty_sample_directory(samples) -> None:  # type: ignore[no-untyped-def]
    config, live = samples
    setup = service.prepare(config)
    assert setup is not None and setup.reuse_port
    assert not live.exists()
