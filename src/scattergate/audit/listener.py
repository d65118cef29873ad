"""The audit's own SMTP listener: where a careless server's bounce arrives.

It accepts mail only for the one sender address the audit controls (anything else gets 550,
so it can never become a mail sink for strangers) and hands every message to a waiter.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Self

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True, slots=True)
class Received:
    sender: str  # envelope MAIL FROM ('' for the null sender a bounce must carry)
    recipients: tuple[str, ...]
    data: bytes
    peer: str


class _Handler:
    def __init__(self, address: str, inbox: asyncio.Queue[Received]) -> None:
        self.address = address.lower()
        self.inbox = inbox

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower() != self.address:
            return "550 5.1.1 Not the audit's address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        sender = (envelope.mail_from or "").strip("<>")  # aiosmtpd keeps the null sender as "<>"
        self.inbox.put_nowait(Received(sender, tuple(envelope.rcpt_tos),
                                       bytes(content), peer))
        return "250 2.0.0 Received by the scattergate audit"


class BounceListener:
    """`async with BounceListener(host, port, address) as listener:` then `await listener.next(t)`."""

    def __init__(self, host: str, port: int, address: str) -> None:
        self.host, self.port, self.address = host, port, address
        self.inbox: asyncio.Queue[Received] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Self:
        handler = _Handler(self.address, self.inbox)
        loop = asyncio.get_running_loop()

        def factory() -> Any:
            # hostname= spares a getfqdn() per connection; the name must differ from the
            # audited server's, or a Postfix would think the mail loops back to itself.
            return SMTP(handler, hostname="scattergate-audit.invalid", ident="scattergate audit",
                        enable_SMTPUTF8=True, data_size_limit=10 * 1024 * 1024)

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
