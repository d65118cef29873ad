"""One SMTP session against the audited server, recording every reply it gives.

The audit judges a server by its replies, so every command goes through `command()`, which
never raises on a refusal: a 5xx is an answer, not an error. Only a lost connection or a
timeout raises (`ProbeError`), because then the test could not be completed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import aiosmtplib

from scattergate.logfmt import escape

PROBE_PREFIX = "sg-audit-"  # lets the audited server's admin find our probes in the logs


def random_local_part() -> str:
    """A local part no real mailbox has: the prefix plus 64 random bits."""
    return PROBE_PREFIX + secrets.token_hex(8)


class ProbeError(Exception):
    """The session could not be completed: refused connection, timeout, lost connection."""


@dataclass(frozen=True, slots=True)
class Reply:
    command: str  # what we sent ("connect" for the banner)
    code: int
    text: str

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        text = " ".join(self.text.split())  # multi-line replies on one line
        return displayable(f"{self.command} → {self.code} {text}")


def displayable(line: str) -> str:
    """The audited server's text is untrusted: no control character (ESC, C1) reaches the
    auditor's terminal raw; printable text, non-ASCII included, stays as it is."""
    return "".join(char if char.isprintable() else escape(char) for char in line)


class SmtpProbe:
    """`async with SmtpProbe(host, port, ...) as smtp:` then `await smtp.command(...)`."""

    def __init__(self, host: str, port: int, *, helo: str, timeout: float) -> None:
        self.host, self.port, self.helo, self.timeout = host, port, helo, timeout
        self.replies: list[Reply] = []
        # No STARTTLS: the audit asks about acceptance, and a plain session works everywhere.
        self._smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout,
                                     local_hostname=helo, start_tls=False, use_tls=False)

    async def __aenter__(self) -> Self:
        try:
            banner = await self._smtp.connect()
        except aiosmtplib.SMTPResponseException as exc:  # a banner other than 220
            self.replies.append(Reply("connect", exc.code, exc.message))
            raise ProbeError(f"the server refused the session: {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.replies.append(Reply("connect", banner.code, banner.message))
        # Through aiosmtplib's own ehlo/helo, so it knows the greeting is done (its data()
        # would otherwise greet again, in the middle of our transaction).
        if not await self._greet("EHLO") and not await self._greet("HELO"):
            raise ProbeError(f"the server refused our greeting: {self.replies[-1]}")
        return self

    async def _greet(self, verb: str) -> bool:
        greet = self._smtp.ehlo if verb == "EHLO" else self._smtp.helo
        try:
            response = await greet(hostname=self.helo)
        except aiosmtplib.SMTPResponseException as exc:
            self.replies.append(Reply(f"{verb} {self.helo}", exc.code, exc.message))
            return False
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"{verb}: {_describe(exc)}") from exc
        self.replies.append(Reply(f"{verb} {self.helo}", response.code, response.message))
        return True

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._smtp.is_connected:
            try:
                await self._smtp.quit(timeout=min(self.timeout, 5))
            except (aiosmtplib.SMTPException, OSError):
                pass  # the verdict is already in the replies
        self._smtp.close()

    async def command(self, line: str, *, fail_on_refusal: bool = False) -> Reply:
        """Send one command line; record and return the reply (a refusal is a reply)."""
        verb, _, argument = line.partition(" ")
        words = [verb.encode("ascii")] + ([argument.encode("utf-8")] if argument else [])
        try:
            response = await self._smtp.execute_command(*words)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"{verb}: {_describe(exc)}") from exc
        reply = Reply(line, response.code, response.message)
        self.replies.append(reply)
        if fail_on_refusal and not reply.accepted:
            raise ProbeError(f"the server refused {verb}: {response.code} {response.message}")
        return reply

    async def data(self, message: bytes) -> Reply:
        """DATA plus the message; the reply recorded is the 354 refusal or the final one."""
        try:
            response = await self._smtp.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            reply = Reply("DATA", exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise ProbeError(f"DATA: {_describe(exc)}") from exc
        else:
            reply = Reply("DATA", response.code, response.message)
        self.replies.append(reply)
        return reply


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return "timed out waiting for the reply"
    return str(exc) or type(exc).__name__
