"""Real content scanners for the system tests: clamd, spamd and rspamd.

Each daemon starts once per test session, on loopback, with its configuration under the
session's temp dir; the first test that needs any scanner launches every installed one at once.
The daemons and the misbehaving `FakeScanner` live in tests/support/scanners.py (the benchmarks
use them too); this file holds only the fixtures.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pytest

from tests.conftest import require_binary
from tests.support.scanners import EICAR, RSPAMD_TAG_MARK, Daemon, FakeScanner, Launcher

# Re-exported: the tests import the samples from here.
__all__ = ["EICAR", "RSPAMD_TAG_MARK"]


@pytest.fixture(scope="session")
def scanner_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    # require_binary skips a test whose daemon is missing locally, and fails it in CI.
    launcher = Launcher(tmp_path_factory.mktemp("scanners"), require=require_binary)
    yield launcher
    launcher.stop()


@pytest.fixture(scope="session")
def clamd(scanner_launcher: Launcher) -> Daemon:
    return scanner_launcher.get("clamd")


@pytest.fixture(scope="session")
def spamd(scanner_launcher: Launcher) -> Daemon:
    return scanner_launcher.get("spamd")


@pytest.fixture(scope="session")
def rspamd(scanner_launcher: Launcher) -> Daemon:
    return scanner_launcher.get("rspamd")


@pytest.fixture
def fake_scanner() -> Iterator[Callable[[str], FakeScanner]]:
    started: list[FakeScanner] = []

    def start(mode: str) -> FakeScanner:
        server = FakeScanner(mode).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
