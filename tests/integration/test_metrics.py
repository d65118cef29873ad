"""/metrics on the HTTP listener: what the gateway did shows up as Prometheus samples."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scattergate.bounce.dsn import FailedMessage, RecipientStatus, build_dsn
from scattergate.delivery.quarantine import Quarantine
from scattergate.web import service as web_service
from tests.support.polling import wait_for
from tests.support.sink import free_port

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
OUTSIDE = ("127.0.0.2", 0)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
def site(gateway, make_config, smtp_sink):  # type: ignore[no-untyped-def]
    """A gateway relaying to smtp-sink (recipient verification on), with its HTTP listener."""
    sink = smtp_sink()
    config = make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": sink.address},
        http={"listen": "127.0.0.1:0"},
    )
    gw = gateway(config)
    web = gw.call(web_service.start(config, gw.gateway, gw.store))
    assert web is not None
    yield gw, web.port
    gw.call(web.stop())


def test_sessions_decisions_reasons_and_check_latency(site) -> None:  # type: ignore[no-untyped-def]
    gw, port = site
    with smtplib.SMTP(*gw.address) as client:
        client.sendmail("a@sender.example", ["user@example.org"], MESSAGE)
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("client.example")
        client.mail("a@sender.example")
        code, _ = client.rcpt("nobody@elsewhere.example")  # not ours: relay denied
        assert code == 554
    text = scrape(port)
    assert value(text, "scattergate_sessions_total") == 2
    assert value(text, "scattergate_decisions_total", phase="data", verdict="accept") == 1
    assert value(text, "scattergate_decisions_total", phase="rcpt", verdict="reject") == 1
    assert value(text, "scattergate_decision_findings_total", verdict="reject", finding="relay.denied") == 1
    # The downstream RCPT probe is a remote check: its latency is in the histogram.
    assert value(text, "scattergate_check_duration_seconds_count", check="verify") == 1
    assert value(text, "scattergate_check_duration_seconds_bucket", check="verify", le="+Inf") == 1


def test_backscatter_refused_is_counted_by_finding(site) -> None:  # type: ignore[no-untyped-def]
    gw, port = site
    original = b"From: user@example.org\r\nTo: x@remote.example\r\nMessage-ID: <never@example.org>\r\n\r\nx\r\n"
    failed = FailedMessage(
        sender="user@example.org", original=original,
        recipients=[RecipientStatus("x@remote.example", "5.1.1", diagnostic="550 5.1.1 no such user")],
        reporting_mta="mx.remote.example", arrival=datetime.now(timezone.utc),
    )
    bounce = build_dsn(failed, now=datetime.now(timezone.utc)).data
    with smtplib.SMTP(*gw.address, source_address=OUTSIDE) as client:
        client.ehlo("mx.remote.example")
        client.mail("")
        code, _ = client.rcpt("user@example.org")
        if code == 250:
            code, _ = client.data(bounce)
        assert code == 550
    text = scrape(port)
    assert value(text, "scattergate_backscatter_refused_total") == 1


def test_dsn_spool_and_disk_gauges(site) -> None:  # type: ignore[no-untyped-def]
    gw, port = site
    recorder = gw.gateway.recorder

    async def count() -> None:  # as the bounce notifier and the scheduler count them
        recorder.count("dsn.sent.failure")
        recorder.count("dsn.suppressed.failure", 2)
        recorder.count("spool.queued")

    gw.call(count())
    Quarantine(gw.config.data_dir / "quarantine", gw.store).hold(MESSAGE, "a@sender.example", ["user@example.org"], "test")
    text = scrape(port)
    assert value(text, "scattergate_dsn_sent_total", kind="failure") == 1
    assert value(text, "scattergate_dsn_suppressed_total", kind="failure") == 2
    assert value(text, "scattergate_spool_messages_total", event="queued") == 1
    assert value(text, "scattergate_quarantine_messages") == 1
    assert value(text, "scattergate_quarantine_bytes") == len(MESSAGE)
    assert value(text, "scattergate_queue_messages") == 0


def test_serve_with_several_workers_adds_up_all_workers(tmp_path: Path) -> None:
    """--workers 2: multiprocess mode, so any worker's scrape counts the sessions of both."""
    smtp_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen(
        [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{smtp_port}", "--workers", "2",
         "--http-listen", f"127.0.0.1:{http_port}", "--data-dir", str(tmp_path / "data"), "--domain", "example.org"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        def up(port: int) -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        # Readiness from the log, not by connecting to the SMTP port: a probe connection may or
        # may not be counted as a session (it closes before or after the worker sees it).
        log_file = tmp_path / "data" / "scattergate.log"

        def listening() -> bool:
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            return text.count(f"port {smtp_port}") >= 2

        assert wait_for(lambda: listening() and up(http_port)), "serve did not start"
        for _ in range(6):  # new connections each: the kernel spreads them over both workers
            with smtplib.SMTP("127.0.0.1", smtp_port) as client:
                client.noop()
        # Every scrape, whichever worker answers it, sees all six sessions.
        for _ in range(4):
            assert value(scrape(http_port), "scattergate_sessions_total") == 6
        assert any((tmp_path / "data" / "metrics").iterdir())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
