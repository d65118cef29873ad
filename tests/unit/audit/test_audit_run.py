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
    """How the fake server answers; `bounce_to` makes it bounce accepted mail to that port."""

    def __init__(self, *, rcpt: str = "250 2.1.5 Ok", null_mail: str = "250 2.1.0 Ok",
                 bounce_to: int | None = None) -> None:
        self.rcpt, self.null_mail, self.bounce_to = rcpt, null_mail, bounce_to
        self.messages: list[bytes] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if address in ("", "<>") and not self.null_mail.startswith("250"):
            return self.null_mail
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.rcpt.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        if self.bounce_to is not None:  # accept now, bounce later: the careless pattern
            task = asyncio.create_task(send_bounce(
                dsn_for(envelope.original_content, envelope.rcpt_tos[0]), envelope.mail_from, self.bounce_to))
            self.tasks.add(task)
        return "250 2.0.0 Ok: queued"


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
            timeout: float = 5.0) -> Options:
    return Options("127.0.0.1", port, "example.org", BOUNCE_SENDER, "auditor.test", timeout,
                   BOUNCE_SENDER if bounce else None, "127.0.0.1", listen_port, wait)


async def test_accept_then_bounce_is_a_risk_on_every_test(fake_server: Any) -> None:
    listen_port = free_port()
    behaviour = Behaviour(bounce_to=listen_port)
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=listen_port))
    statuses = {t.name: t.status for t in report.tests}
    assert statuses == dict.fromkeys(["unknown-recipient", "null-sender", "bounce", "catch-all"], Status.RISK)
    bounce = report.tests[2].bounce
    assert bounce is not None and bounce.kind == "dsn" and bounce.names_probe and bounce.sender == ""
    assert bounce.status_codes == ("5.1.1",)
    assert report.exit_code == 1
    assert len(behaviour.messages) == 1  # only the bounce test sent a message


async def test_refusal_at_rcpt_is_safe_and_sends_no_message(fake_server: Any) -> None:
    behaviour = Behaviour(rcpt="550 5.1.1 User unknown")
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=free_port()))
    assert [t.status for t in report.tests] == [Status.PASS] * 4
    assert report.tests[2].explanation.startswith("refused at RCPT: no message was sent")
    assert behaviour.messages == [] and report.exit_code == 0


async def test_accepted_but_no_bounce_within_the_wait(fake_server: Any) -> None:
    behaviour = Behaviour()  # accepts and keeps quiet (discards, or would bounce much later)
    port = await fake_server(behaviour)
    report = await audit(options(port, listen_port=free_port(), wait=0.3))
    bounce = report.tests[2]
    assert bounce.status is Status.PASS and "no bounce arrived within 0.3 s" in bounce.explanation
    assert report.exit_code == 1  # still accepts unknown recipients


async def test_tempfail_at_rcpt_cannot_complete(fake_server: Any) -> None:
    port = await fake_server(Behaviour(rcpt="450 4.2.0 Greylisted"))
    report = await audit(options(port, bounce=False))
    assert [t.status for t in report.tests] == [Status.ERROR, Status.ERROR, Status.SKIPPED, Status.ERROR]
    assert "greylisting" in report.tests[0].explanation
    assert report.tests[0].replies[-1].code == 450
    assert report.exit_code == 2


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
