"""Shared fixtures: real servers on loopback (our gateway, Postfix's smtp-sink)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from scattergate.config import Config
from scattergate.config_check import validate
from tests.support.gateway import GatewayThread
from tests.support.sink import SmtpSink

IN_CI = os.environ.get("CI") == "true"


def require_binary(name: str) -> str:
    """Path of a real component; skip without it locally, but fail in CI (it must be installed)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )
    if path is None:
        message = f"{name} is not installed (the test command installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def make(**sections: dict) -> Config:
        config = Config()
        config.server.listen = "127.0.0.1:0"
        config.server.hostname = "mx.test.example"
        config.server.workers = 1  # the gateway runs in the test's process, not forked workers
        config.state.data_dir = str(tmp_path / "data")
        config.state.flush_interval = 0.05
        config.logging.file = ""
        # No sender authentication unless a test asks for it (with its loopback DNS server).
        config.auth.spf = config.auth.dkim = config.auth.dmarc = False
        for section, values in sections.items():
            for key, value in values.items():
                setattr(getattr(config, section), key, value)
        validate(config)
        return config

    return make


@pytest.fixture
def gateway() -> Iterator[Callable[[Config], GatewayThread]]:
    """Start our real gateway in a thread with its own event loop; stopped after the test."""
    started: list[GatewayThread] = []

    def start(config: Config) -> GatewayThread:
        thread = GatewayThread(config)
        thread.start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Callable[..., SmtpSink]]:
    """Postfix's smtp-sink as a real downstream MTA; extra args select its failure modes."""
    sinks: list[SmtpSink] = []

    def start(*args: str) -> SmtpSink:
        sink = SmtpSink(require_binary("smtp-sink"), tmp_path / f"sink{len(sinks)}", list(args))
        sink.start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()
