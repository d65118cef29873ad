"""`scattergate audit HOST:PORT --domain DOMAIN`: is this server a backscatter source?

Four tests, each in its own SMTP session (docs/audit.md has the evidence behind each verdict):
1. unknown-recipient: a random, surely non-existent recipient;
2. null-sender: the same from MAIL FROM:<>, as a bounce would come;
3. catch-all: several random local parts in one transaction;
4. after-queue (with --bounce-sender): a test message (GTUBE and EICAR test strings) to an
   address that exists; does it come back as a bounce after being accepted?
Whenever a server accepts a random recipient at RCPT, the test goes on into DATA with a short
harmless message, because a server may still refuse it at the end of DATA (a before-queue
filter) and then nothing is ever bounced. A refusal counts as evidence only if it is about the
recipient (evidence.py); a temporary refusal is tried again a bounded number of times. We
connect to nothing but HOST:PORT; bounces come to our own listener.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from scattergate.config import ConfigError, parse_host_port

from .evidence import Concern, concern, definitely_about_recipient
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
# The test strings every spam and virus filter knows (harmless by design): a filter that
# bounces what it refuses after accepting it shows itself on them.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@dataclass(frozen=True, slots=True)
class Options:
    host: str
    port: int
    domain: str
    sender: str  # MAIL FROM of the unknown-recipient probes
    helo: str
    timeout: float  # per SMTP command, and for the connection
    bounce_sender: str | None  # an address whose mail reaches our listener
    listen_host: str
    listen_port: int
    wait: float  # how long to wait for bounces
    recipient: str = ""  # an existing address (after-queue test); default postmaster@domain
    retries: int = 2  # new attempts after a temporary refusal
    retry_delay: float = 20.0  # before the first new attempt; doubled each time

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_recipient(self) -> str:
        return self.recipient or f"postmaster@{self.domain}"


class _Unreachable(Exception):
    """The server could not be reached: the remaining tests are not run."""


class Stage(enum.Enum):
    MAIL_REFUSED = "refused at MAIL FROM"
    RCPT_REFUSED = "refused at RCPT"
    DATA_REFUSED = "refused at DATA"
    TEMPORARY = "refused temporarily"
    ACCEPTED = "accepted"


@dataclass(slots=True)
class Outcome:
    """How one probe transaction ended, and the reply that ended it."""
    stage: Stage
    reply: Reply | None = None
    accepted_rcpts: int = 0
    attempts: int = 1
    token: str = ""


@dataclass(slots=True)
class Pending:
    """A message the server accepted: a bounce for it may still come to our listener."""
    result: CheckResult
    token: str
    on_bounce: Callable[[CheckResult, Received], None]
    on_silence: Callable[[CheckResult], None]
    bounce: Received | None = field(default=None)


async def _session(opts: Options, result: CheckResult,
                   body: Callable[[SmtpProbe], Awaitable[Outcome]]) -> Outcome | None:
    """One SMTP session; None when it failed mid-way (the test is then ERROR, replies kept)."""
    probe = SmtpProbe(opts.host, opts.port, helo=opts.helo, timeout=opts.timeout)
    before = len(result.replies)
    probe.replies = result.replies  # every attempt's replies end up in the report
    try:
        await probe.__aenter__()
    except ProbeError as exc:
        if len(result.replies) == before:  # not even a banner: no other test can do better
            raise _Unreachable(str(exc)) from exc
        result.status, result.explanation = Status.ERROR, str(exc)
        return None
    try:
        return await body(probe)
    except ProbeError as exc:
        result.status, result.explanation = Status.ERROR, str(exc)
        return None
    finally:
        await probe.__aexit__(None, None, None)


async def _transaction(opts: Options, result: CheckResult, sender: str, recipients: list[str],
                       message: Callable[[str], bytes]) -> Outcome | None:
    """MAIL, the RCPTs, and DATA if any RCPT was accepted; a temporary refusal at RCPT or
    DATA is tried again (same recipients: a verification cache is per address) up to
    `opts.retries` times, `opts.retry_delay` doubling in between."""
    token = recipients[0].partition("@")[0]

    async def body(probe: SmtpProbe) -> Outcome:
        mail = await probe.command(f"MAIL FROM:<{sender}>")
        if not mail.accepted:
            return Outcome(Stage.TEMPORARY if mail.temporary else Stage.MAIL_REFUSED, mail)
        replies = [await probe.command(f"RCPT TO:<{r}>") for r in recipients]
        accepted = sum(r.accepted for r in replies)
        if not accepted:
            refusal = next((r for r in replies if not r.temporary), replies[0])
            return Outcome(Stage.RCPT_REFUSED if not refusal.temporary else Stage.TEMPORARY, refusal)
        data = await probe.data(message(token))
        if data.accepted:
            return Outcome(Stage.ACCEPTED, data, accepted, token=token)
        return Outcome(Stage.TEMPORARY if data.temporary else Stage.DATA_REFUSED, data, accepted)

    outcome: Outcome | None = None
    for attempt in range(opts.retries + 1):
        outcome = await _session(opts, result, body)
        if outcome is None or outcome.stage is not Stage.TEMPORARY or attempt == opts.retries:
            break
        delay = opts.retry_delay * 2 ** attempt
        print(f"scattergate audit: temporary refusal ({outcome.reply}); trying again in {delay:g} s",
              file=sys.stderr, flush=True)
        await asyncio.sleep(delay)
    if outcome is not None:
        outcome.attempts = attempt + 1
    return outcome


def _quote(reply: Reply | None) -> str:
    return f"{reply.code} {' '.join(reply.text.split())}" if reply is not None else "no reply"


def _judge_unknown(result: CheckResult, outcome: Outcome, accepted_means: str) -> None:
    """The verdict for a transaction to recipient(s) that cannot exist."""
    reply = outcome.reply
    if outcome.stage is Stage.ACCEPTED:
        result.status = Status.RISK
        result.explanation = accepted_means
    elif outcome.stage in (Stage.RCPT_REFUSED, Stage.DATA_REFUSED):
        assert reply is not None
        about = concern(reply)
        where = "at RCPT" if outcome.stage is Stage.RCPT_REFUSED else "at the end of DATA"
        if about is Concern.RECIPIENT:
            result.status = Status.PASS
            result.explanation = (f"refused {where} because of the recipient ({_quote(reply)}): "
                                  "the sending client learns of the failure, nothing is bounced")
        else:
            result.status = Status.INCONCLUSIVE
            result.explanation = (f"refused {where} because of the {about} ({_quote(reply)}), not "
                                  "the recipient: this says nothing about unknown recipients"
                                  + _hint(about))
    elif outcome.stage is Stage.MAIL_REFUSED:
        result.status = Status.INCONCLUSIVE
        result.explanation = (f"our MAIL FROM was refused ({_quote(reply)}): the recipient was never "
                              "tested; pass --sender with an address the server accepts")
    else:
        _judge_temporary(result, outcome)


def _judge_temporary(result: CheckResult, outcome: Outcome) -> None:
    reply = outcome.reply
    assert reply is not None
    if definitely_about_recipient(reply):
        # Postfix's reject_unverified_recipient: 450 4.1.1 by default, on every attempt.
        result.status = Status.PASS
        result.explanation = (f"refused temporarily on each of {outcome.attempts} attempts, with a status "
                              f"that names the recipient as the problem ({_quote(reply)}): the "
                              "message is never accepted, so never bounced; the sending MTA gives "
                              "up and tells its own user (a 5xx code would tell it at once)")
    else:
        result.status = Status.ERROR
        result.explanation = (f"refused temporarily on each of {outcome.attempts} attempts "
                              f"({_quote(reply)}; greylisting or a rate limit?): run the audit again later")


def _hint(about: Concern) -> str:
    return {
        Concern.HELO: "; run it again with --helo set to a name the server accepts",
        Concern.SENDER: "; run it again with --sender set to an address the server accepts",
        Concern.CLIENT: "; run it from an address the server accepts mail from",
        Concern.RELAY: "; is --domain a domain this server receives mail for?",
    }.get(about, "")


def _probe_message(sender: str, recipient: str, token: str, *, test_strings: bool = False) -> bytes:
    domain = sender.rpartition("@")[2] or "scattergate-audit.invalid"
    body = (f"A backscatter test by `scattergate audit` ({token}).\r\n"
            "A bounce of this message to its sender means the server accepts mail it cannot\r\n"
            "deliver and bounces it later.\r\n")
    head = (f"From: <{sender or 'MAILER-DAEMON@' + domain}>\r\nTo: <{recipient}>\r\n"
            f"Subject: scattergate audit probe {token}\r\nDate: {formatdate()}\r\n"
            f"Message-ID: <{token}@{domain}>\r\n")
    if not test_strings:
        return (head + "\r\n" + body).encode()
    boundary = f"=_{token}"
    return (head + f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n{body}"
            f"The test strings of spam and virus filters (harmless by design):\r\n{GTUBE}\r\n"
            f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Disposition: attachment; filename=\"eicar.com\"\r\n\r\n{EICAR}\r\n"
            f"--{boundary}--\r\n").encode()


def _bounce_confirms(result: CheckResult, message: Received) -> None:
    result.explanation += (f"; then a bounce came to {message.recipients[0] if message.recipients else 'us'}: "
                           "a backscatter source, confirmed")


def _no_bounce_yet(wait: float) -> Callable[[CheckResult], None]:
    def note(result: CheckResult) -> None:
        result.explanation += (f"; no bounce came within {wait:g} s (one may come later, or the "
                               "message may be delivered to a catch-all or discarded)")
    return note


async def _to_unknown(opts: Options, pending: list[Pending], result: CheckResult, count: int,
                      accepted_means: Callable[[Outcome], str]) -> CheckResult:
    """A probe from --sender to `count` random recipients; a bounce is awaited if it can come to us."""
    recipients = [f"{random_local_part()}@{opts.domain}" for _ in range(count)]
    outcome = await _transaction(opts, result, opts.sender, recipients,
                                 lambda token: _probe_message(opts.sender, recipients[0], token))
    if outcome is not None:
        _judge_unknown(result, outcome, accepted_means(outcome))
        if outcome.stage is Stage.ACCEPTED and opts.sender == opts.bounce_sender:
            pending.append(Pending(result, outcome.token, _bounce_confirms, _no_bounce_yet(opts.wait)))
    return result


async def check_unknown_recipient(opts: Options, pending: list[Pending]) -> CheckResult:
    return await _to_unknown(
        opts, pending, CheckResult("unknown-recipient", "random unknown recipient", Status.ERROR, ""), 1,
        lambda _: ("accepted a message for a recipient that cannot exist, at RCPT and at the end "
                   "of DATA: it must be bounced later (accept-then-bounce)"))


async def check_null_sender(opts: Options, pending: list[Pending]) -> CheckResult:
    result = CheckResult("null-sender", "null sender to unknown recipient", Status.ERROR, "")
    recipient = f"{random_local_part()}@{opts.domain}"
    outcome = await _transaction(opts, result, "", [recipient],
                                 lambda token: _probe_message("", recipient, token))
    if outcome is None:
        return result
    if outcome.stage is Stage.MAIL_REFUSED:
        result.status = Status.PASS
        result.explanation = (f"refuses the null sender altogether ({_quote(outcome.reply)}): no "
                              "backscatter, but RFC 5321 §4.5.5 requires accepting it (genuine "
                              "bounces are lost)")
        return result
    # A message from <> is never bounced, so nothing to wait for: acceptance is the evidence.
    _judge_unknown(result, outcome,
                   "accepted a bounce (MAIL FROM:<>) for a user that does not exist: it fails "
                   "after acceptance, the pattern blocklists test for")
    return result


async def check_catch_all(opts: Options, pending: list[Pending]) -> CheckResult:
    return await _to_unknown(
        opts, pending, CheckResult("catch-all", "wildcard / catch-all", Status.ERROR, ""), CATCH_ALL_PROBES,
        lambda outcome: (f"accepted a message for {outcome.accepted_rcpts} of {CATCH_ALL_PROBES} random "
                         "local parts: a catch-all takes every forged or misspelt address and bounces "
                         "what it cannot deliver"))


async def check_after_queue(opts: Options, pending: list[Pending]) -> CheckResult:
    result = CheckResult("after-queue", "bounce after acceptance", Status.SKIPPED, "")
    if opts.bounce_sender is None:
        result.explanation = ("no --bounce-sender given: a bounce after acceptance (content filter, "
                              "downstream refusal) cannot be seen")
        return result
    result.status = Status.ERROR
    sender, recipient = opts.bounce_sender, opts.known_recipient
    token = random_local_part()

    def message(_: str) -> bytes:
        return _probe_message(sender, recipient, token, test_strings=True)

    outcome = await _transaction(opts, result, sender, [recipient], message)
    if outcome is None:
        return result
    if outcome.stage is Stage.ACCEPTED:
        def bounced(result: CheckResult, received: Received) -> None:
            result.status = Status.RISK
            result.explanation = (f"accepted the test message for <{recipient}>, then bounced it to "
                                  f"<{sender}>: whatever refuses mail after acceptance (a content "
                                  "filter, the next hop) bounces to senders that may be forged")

        def silent(result: CheckResult) -> None:
            result.status = Status.PASS
            result.explanation = (f"accepted the test message for <{recipient}> and no bounce came "
                                  f"within {opts.wait:g} s")

        pending.append(Pending(result, token, bounced, silent))
    elif outcome.stage is Stage.DATA_REFUSED:
        result.status = Status.PASS
        result.explanation = (f"refused the test message at the end of DATA ({_quote(outcome.reply)}): "
                              "the client is told, nothing is bounced")
    elif outcome.stage is Stage.TEMPORARY and not (
            outcome.reply is not None and definitely_about_recipient(outcome.reply)):
        result.status = Status.ERROR
        result.explanation = (f"refused temporarily on each of {outcome.attempts} attempts "
                              f"({_quote(outcome.reply)}): run the audit again later")
    else:
        result.status = Status.INCONCLUSIVE
        about = concern(outcome.reply) if outcome.reply is not None else Concern.OTHER
        result.explanation = f"{outcome.stage.value} ({_quote(outcome.reply)}): " + (
            "the test needs an address that exists; pass --recipient" if about is Concern.RECIPIENT
            else f"because of the {about}, so no test message went through" + _hint(about))
    return result


async def _collect_bounces(listener: BounceListener, pending: list[Pending], wait: float) -> None:
    """Wait up to `wait` seconds, until every pending message has its bounce (matched by the
    probe's token, which our subject, Message-ID and recipient carry)."""
    deadline = time.monotonic() + wait
    while any(p.bounce is None for p in pending) and (remaining := deadline - time.monotonic()) > 0:
        message = await listener.next(remaining)
        if message is None:
            break
        for p in pending:
            if p.bounce is None and p.token.encode() in message.data:
                p.bounce = message
                break


def _describe_bounce(message: Received, token: str) -> BounceSeen:
    from scattergate.bounce.classify import classify

    c = classify(message.data, message.sender)
    return BounceSeen(sender=message.sender, peer=message.peer, kind=c.kind.value,
                      confidence=c.confidence, status_codes=c.status_codes,
                      names_probe=token.encode() in message.data, size=len(message.data))


TESTS: tuple[tuple[str, str, Callable[[Options, list[Pending]], Awaitable[CheckResult]]], ...] = (
    ("unknown-recipient", "random unknown recipient", check_unknown_recipient),
    ("null-sender", "null sender to unknown recipient", check_null_sender),
    ("catch-all", "wildcard / catch-all", check_catch_all),
    ("after-queue", "bounce after acceptance", check_after_queue),
)


async def audit(opts: Options) -> AuditReport:
    listener = (BounceListener(opts.listen_host, opts.listen_port, opts.bounce_sender)
                if opts.bounce_sender else None)
    results: list[CheckResult] = []
    pending: list[Pending] = []
    unreachable: str | None = None
    if listener is not None:
        await listener.__aenter__()  # before any probe, so a bad --listen-bounce fails early
    try:
        for name, title, run in TESTS:
            if unreachable is not None:
                results.append(CheckResult(name, title, Status.SKIPPED,
                                           "not run: the server could not be reached"))
                continue
            # Progress on stderr: the report on stdout stays clean for scripts and --json.
            print(f"scattergate audit: {title} ...", file=sys.stderr, flush=True)
            try:
                results.append(await run(opts, pending))
            except _Unreachable as exc:
                unreachable = str(exc)
                results.append(CheckResult(name, title, Status.ERROR, unreachable))
        if listener is not None and pending:
            print(f"scattergate audit: {len(pending)} message(s) accepted; waiting up to "
                  f"{opts.wait:g} s for bounces to <{opts.bounce_sender}>", file=sys.stderr, flush=True)
            await _collect_bounces(listener, pending, opts.wait)
    finally:
        if listener is not None:
            await listener.__aexit__()
    for p in pending:
        if p.bounce is not None:
            p.result.bounce = _describe_bounce(p.bounce, p.token)
            p.on_bounce(p.result, p.bounce)
        else:
            p.on_silence(p.result)
    return AuditReport(opts.server, opts.domain, results)


def _default_helo() -> str:
    # A fully qualified name: a short one is refused by Postfix's reject_non_fqdn_helo_hostname.
    fqdn = socket.getfqdn()
    return fqdn if "." in fqdn else socket.gethostname()


def options(args: argparse.Namespace) -> Options:
    """Validate the command line; ConfigError names the bad argument."""
    host, port = parse_host_port(args.server, "HOST:PORT")
    domain = args.domain.strip().lower()
    if not domain or "@" in domain or " " in domain:
        raise ConfigError(f"--domain: expected a domain name, got {args.domain!r}")
    recipient = getattr(args, "recipient", None)
    for flag, address in (("--bounce-sender", args.bounce_sender), ("--sender", args.sender),
                          ("--recipient", recipient)):
        if address is not None and (address.count("@") != 1 or not all(address.split("@"))):
            raise ConfigError(f"{flag}: expected local@domain, got {address!r}")
    listen_host, listen_port = parse_host_port(args.listen_bounce, "--listen-bounce")
    if args.wait < 0 or args.timeout <= 0:
        raise ConfigError("--wait must be >= 0 and --timeout > 0")
    retries, retry_delay = getattr(args, "retries", 2), getattr(args, "retry_delay", 20.0)
    if not 0 <= retries <= 10 or retry_delay < 0:
        raise ConfigError("--retries must be 0..10 and --retry-delay >= 0")
    helo = args.helo or _default_helo()
    sender = args.sender or args.bounce_sender or f"postmaster@{helo}"
    return Options(host, port, domain, sender, helo, args.timeout, args.bounce_sender,
                   listen_host, listen_port, args.wait, recipient or "", retries, retry_delay)


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
