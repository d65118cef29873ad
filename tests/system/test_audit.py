"""`scattergate audit` against a real Postfix, configured the careless way and the careful way.

Careless: `relay_domains = example.org` without `relay_recipient_maps`, so Postfix accepts any
recipient, relays to a downstream (smtp-sink -f rcpt) that refuses it, and bounces to the
sender; the sender's domain (bounce.test) is routed to the audit's own listener, so the bounce
really arrives. Careful: the same, plus a recipient list, so unknown recipients die at RCPT.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support.postfix import PrivatePostfix
from tests.support.sink import SmtpSink, free_port
from tests.system.postfix_fixtures import world_dir

pytestmark = pytest.mark.system

DOMAIN = "example.org"
BOUNCE_SENDER = "audit@bounce.test"


def postfix_settings(sink_port: int, listen_port: int, *, careful: bool) -> dict[str, str]:
    settings = {
        "relay_domains": DOMAIN,
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "transport_maps": (f"inline:{{ {{{DOMAIN} = relay:[127.0.0.1]:{sink_port}}}, "
                           f"{{bounce.test = relay:[127.0.0.1]:{listen_port}}} }}"),
        # Fast queue: the bounce must come within seconds, not Postfix's production minutes.
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "maximal_queue_lifetime": "20s",
        "bounce_queue_lifetime": "20s",
    }
    if careful:
        settings["relay_recipient_maps"] = f"inline:{{ {{postmaster@{DOMAIN} = ok}} }}"
    return settings


@pytest.fixture
def mail_system() -> Iterator[Callable[[bool], tuple[PrivatePostfix, SmtpSink, int]]]:
    """Start (Postfix, its refusing downstream, the port for the audit's listener)."""
    require_binary("postfix")
    sink_binary = require_binary("smtp-sink")
    started: list[tuple[PrivatePostfix, SmtpSink, Path]] = []

    def start(careful: bool) -> tuple[PrivatePostfix, SmtpSink, int]:
        work = world_dir("sg-audit-")  # Postfix runs as 'postfix' and must reach its queue
        sink = SmtpSink(sink_binary, work / "sink", ["-f", "rcpt"])
        sink.start()
        listen_port = free_port()
        postfix = PrivatePostfix(work / "postfix", port=free_port(),
                                 settings=postfix_settings(sink.port, listen_port, careful=careful))
        started.append((postfix, sink, work))
        postfix.start()
        return postfix, sink, listen_port

    yield start
    for postfix, sink, work in started:
        postfix.stop()
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_audit(postfix: PrivatePostfix, listen_port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scattergate", "audit", postfix.address, "--domain", DOMAIN,
         "--bounce-sender", BOUNCE_SENDER, "--listen-bounce", f"127.0.0.1:{listen_port}",
         "--wait", "40", "--timeout", "10", "--helo", "auditor.test", *extra],
        capture_output=True, text=True, timeout=90, check=False,
    )


def test_careless_postfix_is_a_backscatter_source(mail_system: Callable[..., tuple]) -> None:
    postfix, sink, listen_port = mail_system(False)
    result = run_audit(postfix, listen_port, "--json")
    assert result.returncode == 1, result.stdout + result.stderr + postfix.log()
    report = json.loads(result.stdout)
    tests = {t["name"]: t for t in report["tests"]}
    assert report["verdict"] == "backscatter risk"
    assert [t["name"] for t in report["tests"]] == ["unknown-recipient", "null-sender", "bounce", "catch-all"]
    assert all(t["status"] == "RISK" for t in report["tests"]), report
    # The bounce really came back to our listener, from Postfix, about our probe message.
    bounce = tests["bounce"]["bounce"]
    assert bounce["sender"] == "" and bounce["peer"] == "127.0.0.1"
    assert bounce["kind"] == "dsn" and bounce["names_probe"] is True
    assert any(code.startswith("5.") for code in bounce["status_codes"])
    assert [r["code"] for r in tests["bounce"]["replies"] if r["command"] == "DATA"] == [250]
    assert [r["code"] for r in tests["catch-all"]["replies"] if r["command"].startswith("RCPT")] == [250] * 3
    # The RCPT-only tests sent no message: the one Postfix accepted is the bounce test's.
    assert postfix.log().count("status=bounced") == 1
    assert sink.messages() == []  # the downstream refused at RCPT, as intended


def test_careful_postfix_is_safe(mail_system: Callable[..., tuple]) -> None:
    postfix, _sink, listen_port = mail_system(True)
    result = run_audit(postfix, listen_port)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    verdicts = [line.split()[0] for line in lines if line[:1].isupper() and line.split()[0] in
                ("PASS", "RISK", "SKIPPED", "ERROR")]
    assert verdicts == ["PASS"] * 4, result.stdout
    assert "RCPT TO:<sg-audit-" in result.stdout and "→ 550 5.1.1" in result.stdout
    assert "refused at RCPT: no message was sent" in result.stdout
    assert "DATA" not in result.stdout  # nothing to bounce, so no message was sent
    assert result.stdout.rstrip().endswith("unknown recipients are refused during the SMTP dialogue.")
    assert "status=bounced" not in postfix.log()


def test_unreachable_server_cannot_complete() -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "scattergate", "audit", f"127.0.0.1:{port}", "--domain", DOMAIN,
         "--timeout", "5", "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert [t["status"] for t in report["tests"]] == ["ERROR", "SKIPPED", "SKIPPED", "SKIPPED"]
