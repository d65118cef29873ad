"""The audit's own SMTP listener: where a careless server's bounce arrives.

It accepts mail only for the one sender address the audit controls (anything else gets 550,
so it can never become a mail sink for strangers) and hands every message to a waiter.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Self

from scattergate.frontends import smtp_protocol as sp
from scattergate.frontends.smtp_server import MailboxHandler, SmtpConnection, Timing

# hostname: the name must differ from the audited server's, or a Postfix would think the mail
# loops back to itself.
_SETTINGS = sp.Settings(hostname="scattergate-audit.invalid", ident="ESMTP scattergate audit",
                        max_message_size=10 * 1024 * 1024, smtputf8=True)
_TIMING = Timing()


@dataclass(frozen=True, slots=True)
class Received:
    sender: str  # envelope MAIL FROM ('' for the null sender a bounce must carry)
    recipients: tuple[str, ...]
    data: bytes
    peer: str


class _Handler(MailboxHandler):
    """One connection to the listener: takes mail for `address` only."""

    def __init__(self, address: str, inbox: asyncio.Queue[Received], peer: object) -> None:
        super().__init__(peer)
        self.address = address.lower()
        self.inbox = inbox

    def check_recipient(self, address: str) -> str | None:
        return None if address.lower() == self.address else "550 5.1.1 Not the audit's address"

    def take(self, sender: str, recipients: tuple[str, ...], content: bytes) -> str:
        self.inbox.put_nowait(Received(sender, recipients, content, self.peer))
        return "250 2.0.0 Received by the scattergate audit"


class BounceListener:
    """`async with BounceListener(host, port, address) as listener:` then `await listener.next(t)`."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self.host, self.port, self.address = host, port, address
        self.inbox: asyncio.Queue[Received] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()

        def factory() -> SmtpConnection:
            return SmtpConnection(_SETTINGS, _TIMING, lambda peer: _Handler(self.address, self.inbox, peer))

        self._server = await loop.create_server(factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def next(self, timeout: float) -> Received | None:
        """The next message to arrive within `timeout` seconds, or None."""
        try:
            return await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
