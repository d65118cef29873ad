"""The shared vocabulary: sessions, envelopes, findings, replies and verdicts.

Checks produce `Finding`s, `decision/` turns them into a `Verdict`, and front ends turn a
verdict's `Reply` into wire format. The types enforce the conventions of DESIGN.md: a `Reject`
cannot carry a 4xx code and a `Tempfail` cannot carry a 5xx code.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime, localtime
from typing import Any, Union

from scattergate.address import Address


class Phase(enum.StrEnum):
    """SMTP phases at which checks run (and, for the milter, at which callbacks arrive)."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check observed. Never a reply code: only `decision/` decides.

    `key` ("check.result") is what the policy table matches on.
    """

    check: str
    result: str
    detail: str = ""
    score: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.check}.{self.result}"

    def __str__(self) -> str:
        text = self.key
        if self.score:
            text += f"({self.score:+g})"
        if self.detail:
            text += f"[{self.detail}]"
        return text


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: basic code, RFC 3463 enhanced status code and text."""

    code: int
    status: str
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.status and self.status[0] != str(self.code)[0]:
            raise ValueError(f"enhanced status {self.status} does not match code {self.code}")
        if "\r" in self.text or "\n" in self.text:
            raise ValueError("reply text must be one line")

    def require_class(self, digit: int, what: str) -> None:
        """Refuse to build `what` around a reply of the wrong class (a 'reject' with a 4xx)."""
        if self.code // 100 != digit:
            raise ValueError(f"{what} needs a {digit}xx reply, not {self.code}")

    def __str__(self) -> str:
        if self.status:
            return f"{self.code} {self.status} {self.text}"
        return f"{self.code} {self.text}"

    @classmethod
    def parse(cls, line: str) -> "Reply":
        """Parse '550 5.1.1 text' (the enhanced code is optional), as written in config."""
        parts = line.strip().split(" ", 2)
        code = int(parts[0])
        if len(parts) > 1 and _looks_like_status(parts[1]):
            return cls(code, parts[1], parts[2] if len(parts) > 2 else "")
        return cls(code, "", line.strip()[len(parts[0]) + 1:])


def _looks_like_status(token: str) -> bool:
    pieces = token.split(".")
    return len(pieces) == 3 and all(p.isdigit() for p in pieces)


@dataclass(frozen=True, slots=True)
class Accept:
    """Take the message (or recipient): deliver it."""

    reply: Reply = Reply(250, "2.0.0", "OK")
    findings: tuple[Finding, ...] = ()
    name = "accept"

    def __post_init__(self) -> None:
        if self.reply.code // 100 != 2:
            raise ValueError(f"an Accept needs a 2xx reply, not {self.reply.code}")


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Take the message but hold it instead of delivering it (visible in the quarantine)."""

    reply: Reply = Reply(250, "2.0.0", "OK")
    findings: tuple[Finding, ...] = ()
    name = "quarantine"

    def __post_init__(self) -> None:
        if self.reply.code // 100 != 2:
            raise ValueError(f"a Quarantine needs a 2xx reply, not {self.reply.code}")


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse permanently, inside the dialogue."""

    reply: Reply
    findings: tuple[Finding, ...] = ()
    name = "reject"

    def __post_init__(self) -> None:
        self.reply.require_class(5, "a Reject")


@dataclass(frozen=True, slots=True)
class Tempfail:
    """Refuse for now, inside the dialogue; the client retries later."""

    reply: Reply
    findings: tuple[Finding, ...] = ()
    name = "tempfail"

    def __post_init__(self) -> None:
        self.reply.require_class(4, "a Tempfail")


Verdict = Union[Accept, Quarantine, Reject, Tempfail]


class _RandomBytes:
    """Random bytes from the OS, as `secrets` gives them, read a page at a time: one system call
    for hundreds of ids instead of one each (a session and a message each take one). A forked
    child starts afresh: it must not hand out its parent's ids again."""

    _PAGE = 4096

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # The loop and threads both take ids; in a forked child, a lock another thread held at
        # the fork would stay held: a new one.
        self._lock = threading.Lock()
        self._page, self._used = b"", self._PAGE

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._used + count > len(self._page):
                self._page, self._used = os.urandom(self._PAGE), 0
            start = self._used
            self._used += count
            return self._page[start:self._used]


_random_bytes = _RandomBytes()


def new_id() -> str:
    """A short, unique-enough id for sessions and messages (log correlation, file names)."""
    return _random_bytes.take(6).hex()


_date_cache: tuple[int, str] = (-1, "")


def header_date() -> str:
    """Now, as an RFC 5322 date in local time (the Received trace fields we add). The text
    changes once a second and every message asks for it: formatted once per second."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, format_datetime(localtime(datetime.fromtimestamp(second))))
    return _date_cache[1]


@dataclass(slots=True)
class Envelope:
    """One mail transaction: MAIL FROM, the accepted RCPTs, and the content.

    Reset by RSET and by the end of DATA; the session survives both.
    """

    sender: Address
    mail_options: tuple[str, ...] = ()
    recipients: list[Address] = field(default_factory=list)
    rcpt_options: list[tuple[str, ...]] = field(default_factory=list)
    # Sender-level findings are held here until RCPT, so each decision is logged with both
    # the sender and the recipient (DESIGN.md: reject late, log fully).
    sender_findings: list[Finding] = field(default_factory=list)
    # Findings behind the accepted RCPTs, carried into the end-of-DATA decision and its log line.
    rcpt_findings: list[Finding] = field(default_factory=list)
    content: bytes = b""
    message_id: str = field(default_factory=new_id)
    # Sender authentication results (checks/senderauth.py), kept for DMARC and the
    # safe-bounce rule: an SpfResult for MAIL FROM, and the DkimResults of the message.
    spf: Any = None
    dkim: tuple[Any, ...] = ()
    # RFC 3461 DSN parameters: RET and ENVID from MAIL, NOTIFY and ORCPT per RCPT.
    ret: str = ""
    envid: str = ""
    rcpt_dsn: list["RcptDsn"] = field(default_factory=list)
    # This transaction was counted against the client's message rate (checks/ratelimit.py).
    rate_counted: bool = False
    # DNSBL findings for the client, looked up once per transaction (checks/dnsbl.py): a
    # message with 50 recipients costs one lookup per zone, and a DNS outage one wait.
    dnsbl: tuple[Finding, ...] | None = None


@dataclass(frozen=True, slots=True)
class RcptDsn:
    """The DSN parameters of one accepted recipient."""

    notify: frozenset[str] | None = None  # None: not given (the default is FAILURE,DELAY)
    orcpt: str = ""


@dataclass(slots=True)
class Session:
    """One client connection."""

    client_ip: str
    client_port: int = 0
    id: str = field(default_factory=new_id)
    helo: str = ""
    esmtp: bool = False
    tls: bool = False
    trusted: bool = False
    # The SMTP AUTH user, once authenticated (which makes the session trusted).
    auth_user: str = ""
    started: float = field(default_factory=time.time)
    findings: list[Finding] = field(default_factory=list)
    envelope: Envelope | None = None
    transactions: int = 0
