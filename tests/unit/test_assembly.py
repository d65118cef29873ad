"""What watches a gateway (the metrics) is given to assembly.py, which builds the recorder and
the remote checks with it: nothing wraps a built gateway's checks or joins its recorder later,
and a SIGHUP's new gateway feeds the same metrics. The Postfix-side services' RCPT checks are
chosen there too."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable, Iterator

import pytest

from scattergate import serve
from scattergate.assembly import assemble, instrumented
from scattergate.checks import CheckContext, PhaseChecks, RemoteCheck
from scattergate.checks.limits import RecipientLimit
from scattergate.checks.recipients import RecipientCheck
from scattergate.checks.relay import RelayCheck
from scattergate.checks.senderauth import SpfCheck
from scattergate.checks.srs import SrsRecipientCheck
from scattergate.config import Config
from scattergate.model import Finding, Phase, Session
from scattergate.pipeline import Gateway
from scattergate.state.sqlite import SqliteStore
from scattergate.web.metrics import MULTIPROC_ENV, Metrics
from scattergate.web.service import metrics_for


@pytest.fixture(autouse=True)
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Per-process metrics, read back from the Metrics' own registry.
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    """SPF on (a remote check at RCPT, never asked here) and the HTTP listener on."""
    config = make_config(receive={"domains": ["example.org"]}, http={"listen": "127.0.0.1:0"})
    config.auth.spf = True
    config.dns.nameservers = ["127.0.0.1"]
    return config


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "state.sqlite3")
    yield store
    store.close()


def sessions(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("scattergate_sessions_total")


def test_without_metrics_the_checks_are_the_raw_ones(config: Config, store: SqliteStore) -> None:
    parts = assemble(config, store)
    (spf,) = parts.checks[Phase.RCPT].remote
    assert isinstance(spf.run, SpfCheck)
    assert parts.metrics is None and parts.recorder.observers == []
    parts.resolver.close()  # type: ignore[union-attr]


def test_with_metrics_the_remote_checks_are_built_timed(config: Config, store: SqliteStore) -> None:
    metrics = metrics_for(config)
    assert metrics is not None
    parts = assemble(config, store, metrics)
    (spf,) = parts.checks[Phase.RCPT].remote
    assert spf.name == "spf" and spf.budget == config.auth.spf_budget
    assert not isinstance(spf.run, SpfCheck)  # the timing wrapper around it
    assert parts.metrics is metrics and parts.recorder.observers == [metrics]
    parts.recorder.count("sessions")
    assert sessions(metrics) == 1
    parts.resolver.close()  # type: ignore[union-attr]


async def test_instrumented_is_a_new_table_and_leaves_the_old_one_alone(tmp_path: Path) -> None:
    async def answer(ctx: CheckContext) -> list[Finding]:
        return [Finding("probe", "ok")]

    def local(ctx: CheckContext) -> list[Finding]:
        return []

    raw = RemoteCheck("probe", answer, 1.0)
    table = {Phase.RCPT: PhaseChecks([local], [raw])}
    metrics = Metrics(tmp_path / "spool", tmp_path / "quarantine")
    timed = instrumented(table, metrics.instrument)
    assert table[Phase.RCPT].remote == [raw] and table[Phase.RCPT].local == [local]
    assert timed[Phase.RCPT].local == [local] and timed[Phase.RCPT].local is not table[Phase.RCPT].local
    (wrapped,) = timed[Phase.RCPT].remote
    assert (wrapped.name, wrapped.budget) == ("probe", 1.0) and wrapped.run is not answer
    assert await wrapped.run(CheckContext(Session(id="s", client_ip="192.0.2.1"))) == [Finding("probe", "ok")]
    count = metrics.registry.get_sample_value("scattergate_check_duration_seconds_count", {"check": "probe"})
    assert count == 1


async def test_a_reloaded_gateway_feeds_the_running_metrics(config: Config, store: SqliteStore) -> None:
    """SIGHUP builds a new Gateway: its decisions and checks go to the metrics the listener serves."""
    metrics = metrics_for(config)
    gateway = Gateway(config, store, assemble(config, store, metrics))
    await gateway.start()
    current, retired = [gateway], set()  # type: ignore[var-annotated]
    serve._reload(lambda: config, config, store, current, retired)
    await asyncio.gather(*retired)
    fresh = current[0]
    try:
        assert fresh is not gateway and fresh.parts.metrics is metrics
        assert not isinstance(fresh.checks[Phase.RCPT].remote[0].run, SpfCheck)
        fresh.recorder.count("sessions")
        assert sessions(metrics) == 1
    finally:
        await fresh.stop()


def rcpt_local_kinds(parts) -> list[type]:  # type: ignore[no-untyped-def]
    return [type(check) for check in parts.checks[Phase.RCPT].local]


def test_behind_postfix_relay_and_recipients_are_postfixs(make_config: Callable[..., Config],
                                                          store: SqliteStore, tmp_path: Path) -> None:
    """Built so from the start (the milter and policy services), not trimmed after."""
    config = make_config(receive={"domains": ["example.org"]})
    assert rcpt_local_kinds(assemble(config, store)) == [RecipientLimit, RelayCheck, RecipientCheck]
    assert rcpt_local_kinds(assemble(config, store, behind_postfix=True)) == [RecipientLimit]
    (tmp_path / "rcpts").write_text("user@example.org\n")
    (tmp_path / "srs.secrets").write_text("a-secret-of-enough-length\n")
    (tmp_path / "srs.secrets").chmod(0o600)
    config = make_config(receive={"domains": ["example.org"], "recipients_file": str(tmp_path / "rcpts")},
                         postfix={"srs_domain": "fwd.example.org", "srs_secrets_file": str(tmp_path / "srs.secrets")})
    assert rcpt_local_kinds(assemble(config, store, behind_postfix=True)) == [
        RecipientLimit, RecipientCheck, SrsRecipientCheck]
