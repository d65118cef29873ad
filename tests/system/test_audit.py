"""`scattergate audit` against real Postfix instances, one per way a server can be set up.

Each case is a private Postfix relaying `example.org` to smtp-sink (the next hop); the audit's
bounce sender domain (bounce.test) is routed to the audit's own listener, so a bounce really
arrives when Postfix sends one. Every case asserts the verdict AND the evidence behind it (which
command was refused, with which code), because a right verdict for a wrong reason is luck:

| case | set-up | verdict |
|---|---|---|
| careless | no recipient validation | risk: accepted, and the bounce came |
| careful | relay_recipient_maps | safe: 550 5.1.1 at RCPT |
| HELO restrictions | no recipient validation + reject_non_fqdn_helo_hostname | never safe: 504 5.5.2 is about our HELO |
| reject_unverified_recipient | Postfix's default 450 4.1.1, on every attempt | safe: the recipient is never accepted |
| before-queue filter | smtpd_proxy_filter (speed_adjust) to a Postfix that validates | safe: 550 5.1.1 at the end of DATA |
| after-queue filter | recipients validated, then a content filter that refuses | risk: the test message bounced |
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support.postfix import PrivatePostfix
from tests.support.sink import SmtpSink, free_port
from tests.system.postfix_fixtures import world_dir

pytestmark = pytest.mark.system

DOMAIN = "example.org"
BOUNCE_SENDER = "audit@bounce.test"
TESTS = ["unknown-recipient", "null-sender", "catch-all", "after-queue"]
RECIPIENTS = f"inline:{{ {{postmaster@{DOMAIN} = ok}} }}"


@dataclass
class MailSystem:
    postfix: PrivatePostfix
    sink: SmtpSink
    listen_port: int

    def audit(self, *extra: str, wait: float = 40) -> tuple[int, dict]:
        result = subprocess.run(
            [sys.executable, "-m", "scattergate", "audit", self.postfix.address, "--domain", DOMAIN,
             "--bounce-sender", BOUNCE_SENDER, "--listen-bounce", f"127.0.0.1:{self.listen_port}",
             "--wait", str(wait), "--timeout", "15", "--helo", "auditor.test",
             "--retries", "1", "--retry-delay", "1", "--json", *extra],
            capture_output=True, text=True, timeout=180, check=False,
        )
        assert result.stdout.startswith("{"), result.stderr + self.postfix.log()
        return result.returncode, json.loads(result.stdout)


def fast_queue() -> dict[str, str]:
    # The bounce must come within seconds, not Postfix's production minutes.
    return {"queue_run_delay": "1s", "minimal_backoff_time": "1s", "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "20s", "bounce_queue_lifetime": "20s"}


def relay_to(sink_port: int, listen_port: int) -> dict[str, str]:
    return {
        "relay_domains": DOMAIN,
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        # The audit connects from 127.0.0.1: keep it out of mynetworks, like a stranger.
        "mynetworks": "127.0.0.2/32",
        "transport_maps": (f"inline:{{ {{{DOMAIN} = relay:[127.0.0.1]:{sink_port}}}, "
                           f"{{bounce.test = relay:[127.0.0.1]:{listen_port}}} }}"),
        **fast_queue(),
    }


@pytest.fixture
def mail_system() -> Iterator[Callable[..., MailSystem]]:
    """start(settings(sink_port, listen_port) -> dict, sink_args) -> a running MailSystem."""
    require_binary("postfix")
    sink_binary = require_binary("smtp-sink")
    cleanup: list[Callable[[], None]] = []

    def start(settings: Callable[[int, int], dict[str, str]], sink_args: list[str],
              work: Path | None = None) -> MailSystem:
        work = work or world_dir("sg-audit-")  # Postfix runs as 'postfix' and must reach its queue
        cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
        sink = SmtpSink(sink_binary, work / f"sink{len(cleanup)}", sink_args)
        sink.start()
        cleanup.append(sink.stop)
        listen_port = free_port()
        postfix = PrivatePostfix(work / f"postfix{len(cleanup)}", port=free_port(),
                                 settings=settings(sink.port, listen_port))
        cleanup.append(postfix.stop)
        postfix.start()
        return MailSystem(postfix, sink, listen_port)

    yield start
    for step in reversed(cleanup):
        step()


def careful_next_hop(mail_system: Callable[..., MailSystem], work: Path) -> MailSystem:
    """A second Postfix that knows the recipients, as the next hop or the filter of another."""
    return mail_system(lambda sink, listen: {
        **relay_to(sink, listen), "relay_recipient_maps": RECIPIENTS, "myhostname": "inner.test"}, [], work)


def by_name(report: dict) -> dict[str, dict]:
    assert [t["name"] for t in report["tests"]] == TESTS
    return {t["name"]: t for t in report["tests"]}


UNKNOWN = ("unknown-recipient", "null-sender", "catch-all")


def audited_safe(system: MailSystem) -> dict[str, dict]:
    """Audit, expect 'safe' with every test passed; the tests by name, for their evidence."""
    code, report = system.audit(wait=3)
    tests = by_name(report)
    assert code == 0 and report["verdict"] == "safe", report
    assert all(t["status"] == "PASS" for t in report["tests"]), report
    return tests


def last(test: dict, verb: str) -> dict:
    return [r for r in test["replies"] if r["command"].startswith(verb)][-1]


def test_careless_postfix_is_a_backscatter_source(mail_system: Callable[..., MailSystem]) -> None:
    system = mail_system(relay_to, ["-f", "rcpt"])
    code, report = system.audit()
    tests = by_name(report)
    assert code == 1 and report["verdict"] == "backscatter risk"
    assert all(t["status"] == "RISK" for t in report["tests"]), report
    unknown = tests["unknown-recipient"]
    assert last(unknown, "RCPT")["code"] == 250 and last(unknown, "DATA")["code"] == 250
    # The bounce really came back to our listener, from Postfix, about our probe message.
    bounce = unknown["bounce"]
    assert bounce["sender"] == "" and bounce["peer"] == "127.0.0.1"
    assert bounce["kind"] == "dsn" and bounce["names_probe"] is True
    assert any(code.startswith("5.") for code in bounce["status_codes"])
    assert "a backscatter source, confirmed" in unknown["explanation"]
    assert [r["code"] for r in tests["catch-all"]["replies"] if r["command"].startswith("RCPT")] == [250] * 3
    assert tests["after-queue"]["bounce"]["names_probe"] is True
    assert system.sink.messages() == []  # the next hop refused every recipient


def test_careful_postfix_is_safe(mail_system: Callable[..., MailSystem]) -> None:
    system = mail_system(lambda sink, listen: {**relay_to(sink, listen), "relay_recipient_maps": RECIPIENTS}, [])
    tests = audited_safe(system)
    for name in UNKNOWN:
        refusal = last(tests[name], "RCPT")
        assert refusal["code"] == 550 and refusal["text"].startswith("5.1.1 "), refusal
        assert "because of the recipient" in tests[name]["explanation"]
        assert not any(r["command"] == "DATA" for r in tests[name]["replies"])  # nothing was sent
    # The after-queue test message reached the next hop, and nothing bounced.
    assert last(tests["after-queue"], "DATA")["code"] == 250
    assert any(b"GTUBE" in m for m in system.sink.messages())
    assert "status=bounced" not in system.postfix.log()


def test_helo_restrictions_are_no_evidence_about_recipients(mail_system: Callable[..., MailSystem]) -> None:
    """No recipient validation, but a short HELO name is refused, at RCPT (delayed evaluation):
    504 5.5.2 is about our HELO, not the recipient, so the server must not be called safe."""
    system = mail_system(lambda sink, listen: {
        **relay_to(sink, listen), "smtpd_helo_required": "yes",
        "smtpd_helo_restrictions": "reject_non_fqdn_helo_hostname"}, ["-f", "rcpt"])
    code, report = system.audit("--helo", "shortname", wait=3)
    tests = by_name(report)
    assert code == 2 and report["verdict"] == "incomplete", report
    for name in TESTS:
        assert tests[name]["status"] == "INCONCLUSIVE", tests[name]
        refusal = last(tests[name], "RCPT")
        assert refusal["code"] == 504 and refusal["text"].startswith("5.5.2 ") and "Helo command rejected" in refusal["text"]
    assert "because of the HELO name" in tests["unknown-recipient"]["explanation"]
    assert "--helo" in tests["unknown-recipient"]["explanation"]
    # With a name it accepts, the same server shows what it is.
    code, report = system.audit()  # --helo auditor.test
    assert code == 1 and by_name(report)["unknown-recipient"]["status"] == "RISK"
    assert by_name(report)["unknown-recipient"]["bounce"]["names_probe"] is True


def test_reject_unverified_recipient_with_its_default_450_is_safe(mail_system: Callable[..., MailSystem]) -> None:
    """unverified_recipient_reject_code is 450 by default: Postfix never accepts the unknown
    recipient and never says 5xx. Tried again (bounded), the 450 4.1.1 stays: safe, not
    'incomplete forever'. The next hop is a Postfix that knows the recipients."""
    work = world_dir("sg-audit-")
    inner = careful_next_hop(mail_system, work)
    system = mail_system(lambda sink, listen: {
        **relay_to(inner.postfix.port, listen), "smtpd_recipient_restrictions": "reject_unverified_recipient"},
        [], work)
    tests = audited_safe(system)
    for name in UNKNOWN:
        test = tests[name]
        rcpts = [r for r in test["replies"] if r["command"].startswith("RCPT")]
        assert len(rcpts) >= 2 and all(r["code"] == 450 and r["text"].startswith("4.1.1 ") for r in rcpts)
        assert "Recipient address rejected" in rcpts[-1]["text"] and "User unknown" in rcpts[-1]["text"]
        assert "names the recipient as the problem" in test["explanation"]
    # postmaster verifies: the after-queue test message went through to the inner next hop.
    assert last(tests["after-queue"], "RCPT")["code"] == 250
    assert any(b"GTUBE" in m for m in inner.sink.messages())
    assert "status=bounced" not in system.postfix.log()


def test_before_queue_filter_refusing_at_the_end_of_data_is_safe(mail_system: Callable[..., MailSystem]) -> None:
    """Postfix accepts every RCPT, then its before-queue filter (a second Postfix that knows the
    recipients, smtpd_proxy_options = speed_adjust) refuses at the end of DATA: the client is
    told, nothing is bounced."""
    work = world_dir("sg-audit-")
    inner = careful_next_hop(mail_system, work)
    system = mail_system(lambda sink, listen: {
        **relay_to(sink, listen), "smtpd_proxy_filter": inner.postfix.address,
        "smtpd_proxy_options": "speed_adjust"}, [], work)
    system.listen_port = inner.listen_port  # bounces would leave from the filter's queue
    tests = audited_safe(system)
    for name in UNKNOWN:
        test = tests[name]
        assert all(r["code"] == 250 for r in test["replies"] if r["command"].startswith("RCPT"))
        refusal = last(test, "DATA")
        assert refusal["code"] == 550 and refusal["text"].startswith("5.1.1 "), refusal
        assert test["explanation"].startswith("refused at the end of DATA because of the recipient")
    assert any(b"GTUBE" in m for m in inner.sink.messages())


def test_after_queue_content_filter_that_bounces_is_a_risk(mail_system: Callable[..., MailSystem]) -> None:
    """Unknown recipients are refused at RCPT, but accepted mail goes through a content filter
    after the queue (here one that refuses every message at the end of DATA), and Postfix
    bounces what it refuses: to whatever sender the mail claimed."""
    work = world_dir("sg-audit-")
    content_filter = mail_system(lambda sink, listen: relay_to(sink, listen), [], work).sink
    content_filter.stop()
    refusing = SmtpSink(content_filter.binary, work / "filter", ["-f", "."])
    refusing.start()
    try:
        system = mail_system(lambda sink, listen: {
            **relay_to(sink, listen), "relay_recipient_maps": RECIPIENTS,
            # FILTER from an access table: only mail received by smtpd is filtered, not the bounce.
            "smtpd_recipient_restrictions": (f"check_client_access inline:{{ {{127.0.0.1 = FILTER "
                                             f"relay:[127.0.0.1]:{refusing.port}}} }}")}, [], work)
        code, report = system.audit()
    finally:
        refusing.stop()
    tests = by_name(report)
    assert code == 1 and report["verdict"] == "backscatter risk", report
    for name in UNKNOWN:
        assert tests[name]["status"] == "PASS" and last(tests[name], "RCPT")["code"] == 550
    after = tests["after-queue"]
    assert after["status"] == "RISK" and last(after, "DATA")["code"] == 250
    assert after["bounce"]["names_probe"] is True and after["bounce"]["sender"] == ""
    assert "then bounced it" in after["explanation"]


def test_unreachable_server_cannot_complete() -> None:
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "scattergate", "audit", f"127.0.0.1:{port}", "--domain", DOMAIN,
         "--timeout", "5", "--json"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert [t["status"] for t in report["tests"]] == ["ERROR", "SKIPPED", "SKIPPED", "SKIPPED"]
