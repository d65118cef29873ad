"""The audit's tests against small in-process SMTP servers on loopback, each behaving one way.

The real-Postfix tests are in tests/system/test_audit.py; here we pin the judgement of each
reply (accept, refuse, tempfail, silence) and the bounce listener, quickly.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP

from scattergate import cli
from scattergate.audit.listener import BounceListener
from scattergate.audit.report import Status
from scattergate.audit.run import Options, audit

BOUNCE_SENDER = "audit@bounce.test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsn_for(original: bytes, recipient: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.test\r\nTo: audit@bounce.test\r\nSubject: Undelivered Mail\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nUser unknown.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--B\r\nContent-Type: message/rfc822\r\n\r\n"
    ).encode() + original + b"\r\n--B--\r\n"


async def send_bounce(message: bytes, to: str, port: int) -> None:
    """MAIL FROM:<> (aiosmtplib.send refuses an empty sender)."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5) as smtp:
        await smtp.sendmail("", [to], message)


class Behaviour:
    """How the fake server answers unknown recipients (postmaster is always accepted);
    `bounce_to` makes it bounce every accepted message to that port."""

    def __init__(self, *, rcpt: str = "250 2.1.5 Ok", null_mail: str = "250 2.1.0 Ok",
                 data: str = "250 2.0.0 Ok: queued", bounce_to: int | None = None) -> None:
        self.rcpt, self.null_mail, self.data, self.bounce_to = rcpt, null_mail, data, bounce_to
        self.messages: list[bytes] = []
        self.rcpt_replies: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address in ("", "<>") and not self.null_mail.startswith("250"):
            return self.null_mail
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = "250 2.1.5 Ok" if address.startswith("postmaster@") else self.rcpt
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        self.rcpt_replies.append(reply)
        return reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        if not self.data.startswith("250"):
            return self.data
        if self.bounce_to is not None and envelope.mail_from not in ("", "<>"):
            # accept now, bounce later: the careless pattern
            task = asyncio.create_task(send_bounce(
                dsn_for(envelope.original_content, envelope.rcpt_tos[0]), envelope.mail_from, self.bounce_to))
            self.tasks.add(task)
        return self.data


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[[Any], Any]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(handler: Any) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(handler, hostname="mx.test"), "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


def options(port: int, *, bounce: bool = True, listen_port: int = 0, wait: float = 5.0,
            timeout: float = 5.0, retries: int = 1) -> Options:
    return Options("127.0.0.1", port, "example.org", BOUNCE_SENDER, "auditor.test", timeout,
                   BOUNCE_SENDER if bounce else None, "127.0.0.1", listen_port, wait,
                   retries=retries, retry_delay=0.0)


def statuses(report: Any) -> dict[str, Status]:
    return {t.name: t.status for t in report.tests}


async def test_accept_then_bounce_is_a_risk_on_every_test(fake_server: Any) -> None:
    listen_port = free_port()
    behaviour = Behaviour(bounce_to=listen_port)
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=listen_port))
    assert statuses(report) == dict.fromkeys(["unknown-recipient", "null-sender", "catch-all", "after-queue"],
                                             Status.RISK)
    unknown = report.tests[0]
    assert unknown.bounce is not None and unknown.bounce.kind == "dsn" and unknown.bounce.names_probe
    assert unknown.bounce.sender == "" and unknown.bounce.status_codes == ("5.1.1",)
    assert "a backscatter source, confirmed" in unknown.explanation
    assert [r.command for r in unknown.replies][-1] == "DATA"
    assert report.tests[3].bounce is not None and "then bounced it" in report.tests[3].explanation
    assert report.exit_code == 1
    assert len(behaviour.messages) == 4  # one per test: each went on into DATA


async def test_refusal_at_rcpt_about_the_recipient_is_safe(fake_server: Any) -> None:
    behaviour = Behaviour(rcpt="550 5.1.1 <x>: Recipient address rejected: User unknown")
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=free_port(), wait=0.3))
    assert statuses(report) == dict.fromkeys(["unknown-recipient", "null-sender", "catch-all", "after-queue"],
                                             Status.PASS)
    assert report.tests[0].explanation.startswith("refused at RCPT because of the recipient (550 5.1.1")
    assert "no bounce came within 0.3 s" in report.tests[3].explanation
    assert len(behaviour.messages) == 1 and b"GTUBE" in behaviour.messages[0]  # the after-queue probe only
    assert report.exit_code == 0


async def test_accepted_but_no_bounce_within_the_wait_is_still_a_risk(fake_server: Any) -> None:
    behaviour = Behaviour()  # accepts and keeps quiet (discards, or would bounce much later)
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=free_port(), wait=0.3))
    unknown = report.tests[0]
    assert unknown.status is Status.RISK and "no bounce came within 0.3 s" in unknown.explanation
    assert report.tests[3].status is Status.PASS
    assert report.exit_code == 1


@pytest.mark.parametrize("reply, about", [
    ("504 5.5.2 <shortname>: Helo command rejected: need fully-qualified hostname", "HELO name"),
    ("554 5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied", "client address"),
    ("554 5.7.1 <x@example.org>: Relay access denied", "relaying"),
])
async def test_refusal_at_rcpt_for_another_reason_is_never_safe(fake_server: Any, reply: str, about: str) -> None:
    port = await fake_server(Behaviour(rcpt=reply))
    report = await audit(options(port, bounce=False))
    unknown = report.tests[0]
    assert unknown.status is Status.INCONCLUSIVE
    assert f"because of the {about}" in unknown.explanation and "not the recipient" in unknown.explanation
    assert report.exit_code == 2 and report.verdict == "incomplete"


async def test_refusal_at_the_end_of_data_about_the_recipient_is_safe(fake_server: Any) -> None:
    behaviour = Behaviour(data="550 5.1.1 <x>: Recipient address rejected: User unknown in relay recipient table")
    port = await fake_server(behaviour)
    report = await audit(options(port, bounce=False))
    assert [t.status for t in report.tests] == [Status.PASS, Status.PASS, Status.PASS, Status.SKIPPED]
    assert report.tests[0].explanation.startswith("refused at the end of DATA because of the recipient")
    assert report.exit_code == 2  # safe at RCPT and DATA, but without a listener after-queue was not tested


async def test_refusal_at_the_end_of_data_for_content_is_not_evidence(fake_server: Any) -> None:
    port = await fake_server(Behaviour(data="554 5.7.1 Message refused as spam"))
    report = await audit(options(port, bounce=False))
    assert report.tests[0].status is Status.INCONCLUSIVE and report.exit_code == 2


async def test_greylisting_is_retried_then_cannot_complete(fake_server: Any) -> None:
    behaviour = Behaviour(rcpt="450 4.2.0 <x>: Recipient address rejected: Greylisted, see http://x")
    port = await fake_server(behaviour)
    report = await audit(options(port, bounce=False, retries=2))
    unknown = report.tests[0]
    assert unknown.status is Status.ERROR and "each of 3 attempts" in unknown.explanation
    assert [r.code for r in unknown.replies if r.command.startswith("RCPT")] == [450, 450, 450]
    assert report.exit_code == 2


async def test_lasting_450_that_names_the_recipient_is_safe(fake_server: Any) -> None:
    """Postfix's reject_unverified_recipient answers 450 4.1.1 by default, every time."""
    port = await fake_server(Behaviour(rcpt="450 4.1.1 <x>: Recipient address rejected: unverified address: "
                                            "host 127.0.0.1 said: 550 5.1.1 User unknown"))
    report = await audit(options(port, bounce=False, retries=1))
    unknown = report.tests[0]
    assert unknown.status is Status.PASS and "names the recipient" in unknown.explanation
    assert [r.code for r in unknown.replies if r.command.startswith("RCPT")] == [450, 450]
    assert [t.status for t in report.tests][:3] == [Status.PASS] * 3


async def test_refusing_the_null_sender_is_no_backscatter_but_is_named(fake_server: Any) -> None:
    port = await fake_server(Behaviour(rcpt="550 5.1.1 unknown", null_mail="550 5.7.1 no bounces here"))
    report = await audit(options(port, bounce=False))
    null = report.tests[1]
    assert null.status is Status.PASS and "RFC 5321" in null.explanation


async def test_silent_server_times_out_and_the_rest_is_skipped() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        report = await audit(options(port, bounce=False, timeout=0.3))
    finally:
        server.close()
    assert [t.status for t in report.tests] == [Status.ERROR, Status.SKIPPED, Status.SKIPPED, Status.SKIPPED]
    assert report.exit_code == 2


async def test_listener_takes_mail_only_for_the_audit_address() -> None:
    async with BounceListener("127.0.0.1", 0, BOUNCE_SENDER) as listener:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await send_bounce(b"Subject: x\r\n\r\nx\r\n", "someone@else.test", listener.port)
        await send_bounce(b"Subject: x\r\n\r\nx\r\n", "Audit@bounce.test", listener.port)
        received = await listener.next(5)
    assert received is not None and received.sender == "" and received.recipients == ("Audit@bounce.test",)


@pytest.mark.parametrize("argv, message", [
    (["audit", "no-port", "--domain", "example.org"], "HOST:PORT"),
    (["audit", "127.0.0.1:25", "--domain", "a@b"], "--domain"),
    (["audit", "127.0.0.1:25", "--domain", "example.org", "--bounce-sender", "nobody"], "--bounce-sender"),
    (["audit", "127.0.0.1:25", "--domain", "example.org", "--wait", "-1"], "--wait"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_listener_that_cannot_bind_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["audit", f"127.0.0.1:{free_port()}", "--domain", "example.org",
                         "--bounce-sender", BOUNCE_SENDER, "--listen-bounce", f"127.0.0.1:{port}"])
    assert code == 2 and "cannot listen" in capsys.readouterr().err
