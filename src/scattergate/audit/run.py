"""`scattergate audit HOST:PORT --domain DOMAIN`: is this server a backscatter source?

Four tests, judged the way blocklist operators judge a server (docs/audit.md):
1. unknown-recipient: is a random, surely non-existent recipient accepted at RCPT?
2. null-sender: is MAIL FROM:<> to such a recipient accepted?
3. bounce: if accepted, does a bounce really come back to an address the audit controls?
4. catch-all: are several random local parts all accepted?
Tests 1, 2 and 4 never send a message (RCPT only); test 3 sends one only when the server
accepted the recipient, because only then is there anything to bounce. We connect to nothing
but HOST:PORT; the bounce comes to our own listener.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate

from scattergate.config import ConfigError, parse_host_port

from .listener import BounceListener, Received
from .probe import ProbeError, Reply, SmtpProbe, random_local_part
from .report import (
    INCOMPLETE,
    AuditReport,
    BounceSeen,
    CheckResult,
    Status,
    render_text,
    to_json,
)

CATCH_ALL_PROBES = 3


@dataclass(frozen=True, slots=True)
class Options:
    host: str
    port: int
    domain: str
    sender: str  # MAIL FROM of the RCPT-only probes
    helo: str
    timeout: float  # per SMTP command, and for the connection
    bounce_sender: str | None  # an address whose mail reaches our listener
    listen_host: str
    listen_port: int
    wait: float  # how long to wait for the bounce

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"


class _Unreachable(Exception):
    """The server could not be reached: the remaining tests are not run."""


def _judge_rcpt(reply: Reply, risk: str, safe: str) -> tuple[Status, str]:
    if reply.accepted:
        return Status.RISK, risk
    if reply.temporary:
        return Status.ERROR, ("temporary refusal (greylisting, pending recipient verification or "
                              "a rate limit?): run the audit again later")
    return Status.PASS, safe


async def _run(opts: Options, result: CheckResult,
               body: Callable[[SmtpProbe, CheckResult], Awaitable[None]]) -> CheckResult:
    """One SMTP session for one test; a failure mid-way makes the test ERROR, replies kept."""
    probe = SmtpProbe(opts.host, opts.port, helo=opts.helo, timeout=opts.timeout)
    result.replies = probe.replies  # the report shows whatever was said, even on failure
    try:
        await probe.__aenter__()
    except ProbeError as exc:
        if not probe.replies:  # not even a banner: no other test can do better
            raise _Unreachable(str(exc)) from exc
        result.status, result.explanation = Status.ERROR, str(exc)
        return result
    try:
        await body(probe, result)
    except ProbeError as exc:
        result.status, result.explanation = Status.ERROR, str(exc)
    finally:
        await probe.__aexit__(None, None, None)
    return result


async def check_unknown_recipient(opts: Options) -> CheckResult:
    async def body(probe: SmtpProbe, result: CheckResult) -> None:
        await probe.command(f"MAIL FROM:<{opts.sender}>", fail_on_refusal=True)
        reply = await probe.command(f"RCPT TO:<{random_local_part()}@{opts.domain}>")
        result.status, result.explanation = _judge_rcpt(
            reply,
            "accepted a recipient that cannot exist: mail it cannot deliver is accepted first "
            "and must be bounced later (accept-then-bounce)",
            "refused at RCPT: the sending client learns of the failure, no bounce is needed")

    return await _run(opts, CheckResult("unknown-recipient", "random unknown recipient",
                                       Status.ERROR, ""), body)


async def check_null_sender(opts: Options) -> CheckResult:
    async def body(probe: SmtpProbe, result: CheckResult) -> None:
        mail = await probe.command("MAIL FROM:<>")
        if mail.temporary:
            result.explanation = "temporary refusal of MAIL FROM:<>: run the audit again later"
        elif not mail.accepted:
            result.status = Status.PASS
            result.explanation = ("refuses the null sender altogether: no backscatter, but RFC 5321 "
                                  "§4.5.5 requires accepting it (genuine bounces are lost)")
        else:
            reply = await probe.command(f"RCPT TO:<{random_local_part()}@{opts.domain}>")
            result.status, result.explanation = _judge_rcpt(
                reply,
                "accepted a bounce (MAIL FROM:<>) for a user that does not exist: it will fail "
                "after acceptance, the pattern blocklists test for",
                "refused at RCPT")

    return await _run(opts, CheckResult("null-sender", "null sender to unknown recipient",
                                       Status.ERROR, ""), body)


async def check_catch_all(opts: Options) -> CheckResult:
    async def body(probe: SmtpProbe, result: CheckResult) -> None:
        await probe.command(f"MAIL FROM:<{opts.sender}>", fail_on_refusal=True)
        replies = [await probe.command(f"RCPT TO:<{random_local_part()}@{opts.domain}>")
                   for _ in range(CATCH_ALL_PROBES)]
        accepted = sum(r.accepted for r in replies)
        if any(r.temporary for r in replies):
            result.explanation = "temporary refusal: run the audit again later"
        elif accepted == len(replies):
            result.status = Status.RISK
            result.explanation = (f"accepted all {accepted} random local parts: a catch-all takes "
                                  "every forged or misspelt address and bounces what it cannot deliver")
        elif accepted:
            result.status = Status.RISK
            result.explanation = f"accepted {accepted} of {len(replies)} random local parts"
        else:
            result.status = Status.PASS
            result.explanation = f"refused all {len(replies)} random local parts at RCPT: no catch-all"

    return await _run(opts, CheckResult("catch-all", "wildcard / catch-all", Status.ERROR, ""), body)


def _probe_message(opts: Options, recipient: str, token: str) -> bytes:
    assert opts.bounce_sender is not None
    domain = opts.bounce_sender.rpartition("@")[2]
    return (
        f"From: <{opts.bounce_sender}>\r\nTo: <{recipient}>\r\n"
        f"Subject: scattergate audit probe {token}\r\nDate: {formatdate()}\r\n"
        f"Message-ID: <{token}@{domain}>\r\n\r\n"
        f"A backscatter test by `scattergate audit` ({token}).\r\n"
        f"The recipient does not exist; a bounce of this message to the sender means the\r\n"
        f"server accepts mail it cannot deliver and bounces it later.\r\n"
    ).encode()


async def check_bounce(opts: Options, listener: BounceListener | None) -> CheckResult:
    result = CheckResult("bounce", "bounce to a sender we control", Status.SKIPPED, "")
    if listener is None or opts.bounce_sender is None:
        result.explanation = ("no --bounce-sender given: pass an address whose mail reaches "
                              "--listen-bounce to see whether a bounce really comes")
        return result
    result.status = Status.ERROR
    token = random_local_part()
    recipient = f"{token}@{opts.domain}"
    sent = False

    async def body(probe: SmtpProbe, result: CheckResult) -> None:
        nonlocal sent
        await probe.command(f"MAIL FROM:<{opts.bounce_sender}>", fail_on_refusal=True)
        reply = await probe.command(f"RCPT TO:<{recipient}>")
        if not reply.accepted:
            result.status, result.explanation = _judge_rcpt(
                reply, "", "refused at RCPT: no message was sent, there is nothing to bounce")
            return
        data = await probe.data(_probe_message(opts, recipient, token))
        if not data.accepted:
            result.status, result.explanation = _judge_rcpt(
                data, "", "refused at end of DATA: the client is told, no bounce is needed")
            return
        sent = True

    await _run(opts, result, body)
    if not sent:
        return result
    print(f"scattergate audit: message accepted; waiting up to {opts.wait:g} s for a bounce to "
          f"<{opts.bounce_sender}>", file=sys.stderr, flush=True)
    seen = await _wait_for_bounce(listener, token, opts.wait)
    if seen is None:
        result.status = Status.PASS
        result.explanation = (f"accepted the message but no bounce arrived within {opts.wait:g} s "
                              "(it may be discarded, or bounced later)")
        return result
    result.bounce = _describe_bounce(seen, token)
    result.status = Status.RISK
    result.explanation = (f"accepted the message for a non-existent recipient, then sent a bounce "
                          f"to {opts.bounce_sender}: a backscatter source")
    return result


async def _wait_for_bounce(listener: BounceListener, token: str, wait: float) -> Received | None:
    """The first message naming our probe; failing that, any message that came in time."""
    deadline = time.monotonic() + wait
    other: Received | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        message = await listener.next(remaining)
        if message is None:
            break
        if token.encode() in message.data:
            return message
        other = other or message
    return other


def _describe_bounce(message: Received, token: str) -> BounceSeen:
    from scattergate.bounce.classify import classify

    c = classify(message.data, message.sender)
    return BounceSeen(sender=message.sender, peer=message.peer, kind=c.kind.value,
                      confidence=c.confidence, status_codes=c.status_codes,
                      names_probe=token.encode() in message.data, size=len(message.data))


async def audit(opts: Options) -> AuditReport:
    listener = (BounceListener(opts.listen_host, opts.listen_port, opts.bounce_sender)
                if opts.bounce_sender else None)
    tests = [
        ("unknown-recipient", "random unknown recipient", check_unknown_recipient),
        ("null-sender", "null sender to unknown recipient", check_null_sender),
        ("bounce", "bounce to a sender we control", None),
        ("catch-all", "wildcard / catch-all", check_catch_all),
    ]
    results: list[CheckResult] = []
    unreachable: str | None = None
    if listener is not None:
        await listener.__aenter__()  # before any probe, so a bad --listen-bounce fails early
    try:
        for name, title, run in tests:
            if unreachable is not None:
                results.append(CheckResult(name, title, Status.SKIPPED,
                                          "not run: the server could not be reached"))
                continue
            # Progress on stderr: the report on stdout stays clean for scripts and --json.
            print(f"scattergate audit: {title} ...", file=sys.stderr, flush=True)
            try:
                results.append(await (run(opts) if run else check_bounce(opts, listener)))
            except _Unreachable as exc:
                unreachable = str(exc)
                results.append(CheckResult(name, title, Status.ERROR, unreachable))
    finally:
        if listener is not None:
            await listener.__aexit__()
    return AuditReport(opts.server, opts.domain, results)


def options(args: argparse.Namespace) -> Options:
    """Validate the command line; ConfigError names the bad argument."""
    host, port = parse_host_port(args.server, "HOST:PORT")
    domain = args.domain.strip().lower()
    if not domain or "@" in domain or " " in domain:
        raise ConfigError(f"--domain: expected a domain name, got {args.domain!r}")
    for flag, address in (("--bounce-sender", args.bounce_sender), ("--sender", args.sender)):
        if address is not None and (address.count("@") != 1 or not all(address.split("@"))):
            raise ConfigError(f"{flag}: expected local@domain, got {address!r}")
    listen_host, listen_port = parse_host_port(args.listen_bounce, "--listen-bounce")
    if args.wait < 0 or args.timeout <= 0:
        raise ConfigError("--wait must be >= 0 and --timeout > 0")
    helo = args.helo or socket.gethostname()
    sender = args.sender or args.bounce_sender or f"postmaster@{helo}"
    return Options(host, port, domain, sender, helo, args.timeout, args.bounce_sender,
                   listen_host, listen_port, args.wait)


def main(args: argparse.Namespace) -> int:
    try:
        opts = options(args)
    except ConfigError as exc:
        print(f"scattergate audit: {exc}", file=sys.stderr)
        return INCOMPLETE
    try:
        report = asyncio.run(audit(opts))
    except OSError as exc:  # our own listener could not bind
        print(f"scattergate audit: cannot listen on {args.listen_bounce}: {exc}", file=sys.stderr)
        return INCOMPLETE
    print(to_json(report) if args.json else render_text(report))
    return report.exit_code
