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
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scattergate.delivery.quarantine import Quarantine
from scattergate.web import service as web_service
from tests.support.backscatter_mail import send_unsolicited_bounce
from tests.support.polling import wait_for
from tests.support.sink import free_port

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


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
    code, _ = send_unsolicited_bounce(gw.address)
    assert code == 550
    text = scrape(port)
    assert value(text, "scattergate_backscatter_refused_total") == 1


def test_backscatter_quarantined_is_counted_apart_from_refused(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    """backscatter.mode = "quarantine": the bounce is held, and counted as stopped backscatter."""
    config = make_config(receive={"domains": ["example.org"]}, delivery={"relay": smtp_sink().address},
                         backscatter={"mode": "quarantine", "batv_mode": "off"}, http={"listen": "127.0.0.1:0"})
    gw = gateway(config)
    web = gw.call(web_service.start(config, gw.gateway, gw.store))
    assert web is not None
    try:
        code, reply = send_unsolicited_bounce(gw.address)
        assert code == 250 and b"held as" in reply
        text = scrape(web.port)
        assert value(text, "scattergate_backscatter_quarantined_total", finding="backscatter.unsolicited") == 1
        assert value(text, "scattergate_backscatter_refused_total") == 0
        assert value(text, "scattergate_decisions_total", verdict="quarantine") == 1
    finally:
        gw.call(web.stop())


def test_standard_process_build_info_and_no_created_series(site) -> None:  # type: ignore[no-untyped-def]
    gw, port = site
    with smtplib.SMTP(*gw.address) as client:
        client.noop()
    text = scrape(port)
    assert value(text, "process_resident_memory_bytes") > 0
    assert value(text, "process_open_fds") > 0
    assert abs(value(text, "process_start_time_seconds") - time.time()) < 24 * 3600
    assert value(text, "process_cpu_seconds_total") > 0
    from scattergate import __version__
    assert value(text, "scattergate_build_info", version=__version__) == 1
    assert "_created" not in text


def test_dsn_suppressed_without_kind_is_notify_never(site) -> None:  # type: ignore[no-untyped-def]
    """The milter counts `dsn.suppressed` when it gives Postfix NOTIFY=NEVER for a recipient."""
    gw, port = site

    async def count() -> None:
        gw.gateway.recorder.count("dsn.suppressed")

    gw.call(count())
    text = scrape(port)
    assert value(text, "scattergate_dsn_suppressed_total", kind="notify_never") == 1


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


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_time(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


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
        # process_*: the parent and both workers as one gateway, whichever worker answers.
        workers = [int(p) for p in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()]
        assert len(workers) == 2
        biggest = max(rss_bytes(pid) for pid in [process.pid, *workers])
        for _ in range(4):
            text = scrape(http_port)
            assert value(text, "process_resident_memory_bytes") > biggest
            assert value(text, "process_start_time_seconds") == start_time(process.pid)
            assert len([line for line in text.splitlines() if line.startswith("process_cpu_seconds_total")]) == 1
        assert any((tmp_path / "data" / "metrics").iterdir())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_counts_repeated_under_one_name_add_up(site) -> None:  # type: ignore[no-untyped-def]
    # The labelled counter behind a name is looked up once and reused: every count still lands.
    gw, port = site
    recorder = gw.gateway.recorder

    async def count() -> None:
        for _ in range(3):
            recorder.count("dsn.suppressed")
            recorder.count("spool.delivered", 2)
        recorder.count("no.such.counter")

    gw.call(count())
    text = scrape(port)
    assert value(text, "scattergate_dsn_suppressed_total", kind="notify_never") == 3
    assert value(text, "scattergate_spool_messages_total", event="delivered") == 6
