"""Build RFC 3464 delivery status notifications (multipart/report; report-type=delivery-status).

Pure: the clock and the Message-ID are inputs; the result is bytes with CRLF line ends plus the
envelope it must be sent with (null reverse-path, so a DSN can never cause another DSN).

Whether a DSN may be sent at all is not decided here: ask bounce.policy.may_bounce first. This
module only refuses the one case that is never right: a DSN to a null sender.

If the returned original holds 8-bit bytes the DSN does too (as Postfix does); the relay that
carries it must offer 8BITMIME or downgrade it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import Message, MIMEPart
from email.mime.multipart import MIMEMultipart
from email.utils import format_datetime, make_msgid
from io import BytesIO
from typing import Literal

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
Ret = Literal["HDRS", "FULL"]

DEFAULT_MAX_RETURN = 256 * 1024  # bytes of the original we are willing to send back

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ACTION_CLASS = {"failed": "5", "delayed": "4", "delivered": "2", "relayed": "2", "expanded": "2"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


class NullSenderError(ValueError):
    """A DSN was requested for a message with a null reverse-path: never bounce a bounce."""


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    address: str  # the final recipient (the address we tried to deliver to)
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1"
    action: Action = "failed"
    diagnostic: str | None = None  # the remote reply, e.g. "550 5.1.1 <x@y>: user unknown"
    remote_mta: str | None = None  # host name of the server that gave `diagnostic`
    orcpt: str | None = None  # RCPT ... ORCPT= value as received ("rfc822;x+2By@z", xtext)
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None  # for action="delayed"


@dataclass(frozen=True, slots=True)
class FailedMessage:
    sender: str  # envelope sender (MAIL FROM), with or without <>
    original: bytes  # the message as we received it
    recipients: Sequence[RecipientStatus]
    reporting_mta: str  # our host name
    arrival: datetime  # when we accepted the message (tz-aware)
    envid: str | None = None  # MAIL ... ENVID= value as received (xtext)
    ret: Ret = "HDRS"  # MAIL ... RET=; RFC 3461 leaves the default to us: headers only


@dataclass(frozen=True, slots=True)
class Dsn:
    mail_from: str  # always "" (null reverse-path)
    rcpt_to: str  # the original sender
    message_id: str
    data: bytes = field(repr=False)


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: "+HH" is the byte 0xHH."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def _field(value: str) -> str:
    """A header-safe single line: remote diagnostics may be multi-line or hostile."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _address(value: str, what: str) -> str:
    addr = value.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if _CONTROL.search(addr) or " " in addr and not addr.startswith('"'):
        raise ValueError(f"{what} is not a plain address: {value!r}")
    return addr


def _header_block(original: bytes) -> bytes:
    """The original's header section, with CRLF line ends."""
    m = re.search(rb"\r?\n\r?\n", original)
    head = original[: m.start()] if m else original
    return b"".join(line + b"\r\n" for line in head.splitlines())


def _cap_headers(head: bytes, limit: int) -> tuple[bytes, bool]:
    if len(head) <= limit:
        return head, False
    cut = head.rfind(b"\r\n", 0, limit)
    return head[: cut + 2 if cut >= 0 else 0], True


def _human_text(failed: FailedMessage, sender: str, note: str | None) -> str:
    failed_rcpts = [r for r in failed.recipients if r.action == "failed"]
    delayed = [r for r in failed.recipients if r.action == "delayed"]
    lines = [f"This is the mail system at host {failed.reporting_mta}.", ""]
    if failed_rcpts:
        lines += ["Your message could not be delivered to one or more recipients.", ""]
    if delayed:
        lines += ["Delivery of your message is delayed; the mail system will keep trying.", ""]
    lines.append(f"Sender: <{sender}>")
    lines.append(f"Received: {format_datetime(failed.arrival)}")
    lines.append("")
    for r in failed.recipients:
        lines.append(f"<{_field(r.address)}>: {r.action} ({r.status})")
        if r.diagnostic:
            host = f" {_field(r.remote_mta)} said" if r.remote_mta else ""
            lines.append(f"   {host.strip() + ': ' if host else ''}{_field(r.diagnostic)}")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _subject(recipients: Sequence[RecipientStatus]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _status_blocks(failed: FailedMessage) -> list[Message]:
    pol = email_policy.SMTP
    per_message = Message(policy=pol)
    per_message["Reporting-MTA"] = f"dns; {_field(failed.reporting_mta)}"
    if failed.envid:
        per_message["Original-Envelope-Id"] = _field(xtext_decode(failed.envid))
    per_message["Arrival-Date"] = format_datetime(failed.arrival)
    blocks = [per_message]
    for r in failed.recipients:
        if not _STATUS.fullmatch(r.status) or r.status[0] != _ACTION_CLASS[r.action]:
            raise ValueError(f"status {r.status!r} does not fit action {r.action!r}")
        block = Message(policy=pol)
        if r.orcpt:
            block["Original-Recipient"] = _field(xtext_decode(r.orcpt))
        block["Final-Recipient"] = f"rfc822; {_address(r.address, 'recipient')}"
        block["Action"] = r.action
        block["Status"] = r.status
        if r.remote_mta:
            block["Remote-MTA"] = f"dns; {_field(r.remote_mta)}"
        if r.diagnostic:
            diag = _field(r.diagnostic)
            block["Diagnostic-Code"] = diag if diag.lower().startswith("smtp;") else f"smtp; {diag}"
        if r.last_attempt:
            block["Last-Attempt-Date"] = format_datetime(r.last_attempt)
        if r.will_retry_until and r.action == "delayed":
            block["Will-Retry-Until"] = format_datetime(r.will_retry_until)
        blocks.append(block)
    return blocks


def _original_part(failed: FailedMessage, max_return: int) -> tuple[Message, str | None]:
    """The returned content: full message for RET=FULL when it fits, else the headers."""
    if failed.ret == "FULL" and len(failed.original) <= max_return:
        part = MIMEPart(policy=email_policy.SMTP)
        # compat32 keeps the original's headers as they were instead of re-rendering them.
        part.set_payload([message_from_bytes(failed.original, policy=email_policy.compat32)])
        part["Content-Type"] = "message/rfc822"
        return part, None
    note = None
    if failed.ret == "FULL":
        note = f"The original message was larger than {max_return} bytes; only its headers are returned."
    head, truncated = _cap_headers(_header_block(failed.original), max_return)
    if truncated:
        note = f"The original message's headers were truncated to {max_return} bytes."
    part = MIMEPart(policy=email_policy.SMTP)
    text = head.decode("ascii", "surrogateescape")
    part.set_payload(text)
    part["Content-Type"] = "text/rfc822-headers"
    part["Content-Transfer-Encoding"] = "7bit" if text.isascii() else "8bit"
    return part, note


def _original_message_id(original: bytes) -> str | None:
    m = re.search(rb"(?im)^message-id:[ \t]*(<[^<>\s]+>)", _header_block(original))
    return m.group(1).decode("ascii", "replace") if m else None


def build_dsn(
    failed: FailedMessage,
    *,
    now: datetime,
    message_id: str | None = None,
    max_return: int = DEFAULT_MAX_RETURN,
) -> Dsn:
    """Build the DSN for `failed`. Raises NullSenderError for a null sender, ValueError for
    malformed input (a status that contradicts its action, an address with control characters)."""
    raw_sender = failed.sender.strip()
    if raw_sender in ("", "<>"):
        raise NullSenderError("no DSN for a null reverse-path")
    sender = _address(raw_sender, "sender")
    if not failed.recipients:
        raise ValueError("a DSN needs at least one recipient")
    host = _field(failed.reporting_mta)
    if not host or " " in host:
        raise ValueError(f"bad reporting MTA name {failed.reporting_mta!r}")
    if now.tzinfo is None or failed.arrival.tzinfo is None:
        raise ValueError("dates must be timezone-aware")
    msgid = message_id or make_msgid(domain=host)

    utf8 = not sender.isascii()  # SMTPUTF8 sender: its address must stay raw in To:
    pol = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP

    report = MIMEMultipart("report", report_type="delivery-status", policy=pol)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{host}>"
    report["To"] = sender
    report["Subject"] = _subject(failed.recipients)
    report["Date"] = format_datetime(now)
    report["Message-ID"] = msgid
    report["Auto-Submitted"] = "auto-replied"
    original_id = _original_message_id(failed.original)
    if original_id:
        # Lets the sender's side (and our own bounce classifier) tie the DSN to its message.
        report["In-Reply-To"] = original_id
        report["References"] = original_id

    returned, note = _original_part(failed, max_return)
    human = MIMEPart(policy=pol)
    human.set_content(_human_text(failed, sender, note))
    status = MIMEPart(policy=pol)
    status.set_payload(_status_blocks(failed))
    status["Content-Type"] = "message/delivery-status"
    for part in (human, status, returned):
        report.attach(part)

    buf = BytesIO()
    BytesGenerator(buf, policy=pol.clone(cte_type="8bit", linesep="\r\n")).flatten(report)
    return Dsn(mail_from="", rcpt_to=sender, message_id=msgid, data=buf.getvalue())
