"""Quarantine operations shared by `scattergate quarantine` and the dashboard.

list / show / release / delete over the quarantine index (state store) and its files. Release
delivers a held message where the gateway delivers accepted mail, without running the checks
that held it again: into the local Maildir in the default set-up, or to the downstream
(delivery.relay, or --to) with `NOTIFY=NEVER` for every recipient, so the message we let out
can never come back as a bounce to anybody. Never back into the gateway itself: its checks
would hold the message again, under a new id. A release or delete is recorded as a decision
(phase "quarantine"), so it shows in the decision log and on the dashboard.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from scattergate.address import AddressError, parse_path
from scattergate.config import Config, ConfigError, parse_host_port
from scattergate.decision.record import format_decision
from scattergate.delivery import maildir
from scattergate.delivery.quarantine import Quarantine
from scattergate.delivery.relay import downstream_reply
from scattergate.model import Finding, Reply
from scattergate.state.store import DecisionRecord, QuarantineItem, StateStore
from scattergate.web.auth import loopback_host

log = logging.getLogger(__name__)


class QuarantineError(Exception):
    """An operation that cannot be done (unknown id, no downstream, refused release)."""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    item: QuarantineItem
    downstream: str  # HOST:PORT, or "maildir DIR" for local delivery
    reply: Reply
    # True when the downstream speaks DSN and got NOTIFY=NEVER with the original sender;
    # False when it does not, and the message went with the null sender instead;
    # None for local delivery (nothing that could bounce).
    notify_never: bool | None


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

    def delete(self, item_id: str, *, by: str = "dashboard") -> QuarantineItem:
        item = self.get(item_id)
        self.quarantine.delete(item)
        self._record(item, "delete", "deleted", Reply(250, "2.0.0", f"deleted {item.id}"), f"by={by}")
        return item

    async def release(self, item_id: str, to: str = "", *, timeout: float = 30.0, by: str = "dashboard") -> ReleaseResult:
        """Deliver a held message (to `to`, else delivery.relay, else the local Maildir), then
        drop it from the quarantine. Raises QuarantineError when it could not be delivered:
        the message then stays held.

        All recipients or none: a downstream that refuses any of them gets RSET and the
        message stays held, so a release never leaves us owing anybody a bounce.
        """
        item = self.get(item_id)
        target = to or self.config.delivery.relay
        content = self.content(item)
        if target:
            host, port = self._downstream(target)
            reply, notify_never = await _inject(
                host, port, item, content, timeout=timeout,
                local_hostname=self.config.server.hostname or socket.getfqdn(),
            )
            if reply.code >= 400:
                raise QuarantineError(f"downstream {target} refused message {item.id}: {reply}")
            where = target
        else:
            root = self.config.maildir
            where, notify_never = f"maildir {root}", None
            reply = await asyncio.to_thread(self._to_maildir, item, content, root)
        self.quarantine.delete(item)
        self._record(item, "release", "released", reply, f"to={where} by={by}")
        return ReleaseResult(item, where, reply, notify_never)

    def _downstream(self, target: str) -> tuple[str, int]:
        try:
            host, port = parse_host_port(target, "--to")
        except ConfigError as exc:
            raise QuarantineError(str(exc)) from None
        if _same_listener((host, port), self.config.server.listen):
            raise QuarantineError(
                f"{target} is this gateway's own listener: its checks would hold the message again, "
                "under a new id. Release to the downstream MTA (--to HOST:PORT or delivery.relay), "
                "or without one, to the local Maildir")
        return host, port

    @staticmethod
    def _to_maildir(item: QuarantineItem, content: bytes, root: Path) -> Reply:
        try:
            recipients = [parse_path(r) for r in item.recipients]
        except AddressError as exc:
            raise QuarantineError(f"message {item.id}: a recipient is not a mailbox: {exc}") from None
        try:
            maildir.deliver(root, recipients, content)
        except OSError as exc:
            raise QuarantineError(f"cannot deliver message {item.id} into {root}: {exc}") from None
        return Reply(250, "2.0.0", f"delivered to {len(recipients)} local mailbox(es)")

    def _record(self, item: QuarantineItem, action: str, result: str, reply: Reply, detail: str) -> None:
        """The release or delete as a decision, for the decision log and the dashboard. The
        message has already been delivered or dropped: a store failure is reported, not raised
        (a retry would deliver it twice)."""
        finding = Finding("quarantine", result, f"id={item.id} {detail}")
        # No SMTP session: the quarantine id stands in its place, to find the entry by.
        record = DecisionRecord(time=time.time(), session=item.id, client="", helo="", sender=item.sender,
                                recipients=item.recipients, phase="quarantine", verdict=action,
                                reply=str(reply), findings=(str(finding),))
        log.info("%s", format_decision(record), extra={"decision": record})
        try:
            self.store.add({f"quarantine.{finding.result}": 1}, [record])
        except Exception as exc:  # e.g. Redis down: the operation itself is done
            log.warning("quarantine %s of %s done, but not recorded in the state store: %s", action, item.id, exc)


def _same_listener(target: tuple[str, int], listen: str) -> bool:
    """Whether `target` reaches our own `server.listen` (same port; same host, a wildcard
    listener, or loopback on both sides)."""
    try:
        host, port = parse_host_port(listen, "server.listen")
    except ConfigError:
        return False
    if port != target[1]:
        return False
    if host in ("0.0.0.0", "::", "") or host == target[0]:
        return True
    return loopback_host(host) and loopback_host(target[0])


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
