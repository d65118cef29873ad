"""Quarantine operations shared by `scattergate quarantine` and the dashboard.

list / show / release / delete over the quarantine index (state store) and its files. Release
re-injects a held message into the downstream with `NOTIFY=NEVER` for every recipient, so the
message we let out can never come back as a bounce to anybody.
"""

from __future__ import annotations

import email.parser
import email.policy
import socket
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from scattergate.config import Config, parse_host_port
from scattergate.delivery.quarantine import Quarantine
from scattergate.delivery.relay import downstream_reply
from scattergate.model import Reply
from scattergate.state.store import QuarantineItem, StateStore


class QuarantineError(Exception):
    """An operation that cannot be done (unknown id, no downstream, refused release)."""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    item: QuarantineItem
    downstream: str
    reply: Reply
    # True when the downstream speaks DSN and got NOTIFY=NEVER with the original sender;
    # False when it does not, and the message went with the null sender instead.
    notify_never: bool


def header_block(content: bytes) -> bytes:
    """The header section of a message (up to the first empty line)."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        head, found, _ = content.partition(separator)
        if found:
            return head + separator[: len(separator) // 2]
    return content


def headers(content: bytes) -> list[tuple[str, str]]:
    """Header fields as (name, unfolded value) pairs, for display."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    message = parser.parsebytes(header_block(content))
    return [(name, " ".join(str(value).split())) for name, value in message.items()]


class QuarantineOps:
    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.store = store
        self.quarantine = Quarantine(config.data_dir / "quarantine", store)

    def list(self, search: str = "", limit: int = 100) -> list[QuarantineItem]:
        return self.store.quarantine_list(limit=limit, search=search)

    def get(self, item_id: str) -> QuarantineItem:
        item = self.store.quarantine_get(item_id)
        if item is None:
            raise QuarantineError(f"no quarantined message {item_id!r}")
        return item

    def content(self, item: QuarantineItem) -> bytes:
        try:
            return self.quarantine.content(item)
        except OSError as exc:
            raise QuarantineError(f"message {item.id}: cannot read {item.path}: {exc.strerror}") from None

    def delete(self, item_id: str) -> QuarantineItem:
        item = self.get(item_id)
        self.quarantine.delete(item)
        return item

    async def release(self, item_id: str, to: str = "", *, timeout: float = 30.0) -> ReleaseResult:
        """Deliver a held message to `to` (default delivery.relay), then drop it from the quarantine.

        All recipients or none: a downstream that refuses any of them gets RSET and the
        message stays held, so a release never leaves us owing anybody a bounce.
        """
        item = self.get(item_id)
        target = to or self.config.delivery.relay
        if not target:
            raise QuarantineError("no downstream: set delivery.relay or pass --to HOST:PORT")
        host, port = parse_host_port(target, "--to")
        content = self.content(item)
        reply, notify_never = await _inject(
            host, port, item, content, timeout=timeout,
            local_hostname=self.config.server.hostname or socket.getfqdn(),
        )
        if reply.code >= 400:
            raise QuarantineError(f"downstream {target} refused message {item.id}: {reply}")
        self.quarantine.delete(item)
        return ReleaseResult(item, target, reply, notify_never)


async def _inject(
    host: str, port: int, item: QuarantineItem, content: bytes, *, timeout: float, local_hostname: str | None
) -> tuple[Reply, bool]:
    client = aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout, start_tls=False,
                             local_hostname=local_hostname)
    try:
        await client.connect()
        await client.ehlo()
        dsn = client.supports_extension("dsn")
        # Without DSN we cannot say NOTIFY=NEVER; the null sender is the other way to make
        # sure nobody is ever bounced to (a bounce is never bounced).
        sender = item.sender if dsn else ""
        utf8 = any(ord(c) > 127 for c in sender + "".join(item.recipients))
        options = ["SMTPUTF8"] if utf8 and client.supports_extension("smtputf8") else []
        encoding = "utf-8" if options else "ascii"
        await client.mail(sender, options=options, encoding=encoding)
        for rcpt in item.recipients:
            await client.rcpt(rcpt, options=["NOTIFY=NEVER"] if dsn else [], encoding=encoding)
        response = await client.data(content)
        reply = downstream_reply(response.code, response.message)
    except aiosmtplib.SMTPResponseException as exc:
        reply = downstream_reply(exc.code, exc.message)
        dsn = False
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            pass
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise QuarantineError(f"cannot deliver to {host}:{port}: {exc}") from None
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
    return reply, dsn


def open_store(config: Config) -> StateStore:
    """The gateway's state store; for SQLite, refuse to create an empty one by mistake."""
    from scattergate.state.factory import open_store as open_configured

    path = config.data_dir / "state.sqlite3"
    if getattr(config.state, "backend", "sqlite") == "sqlite" and not Path(path).exists():
        raise QuarantineError(f"no state store at {path} (is --data-dir right?)")
    return open_configured(config)
