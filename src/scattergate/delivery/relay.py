"""Before-queue relay to the downstream MTA, over pooled, pipelining connections (`smtp_client`).

The client waits while we relay, and gets the downstream's own verdict: 2xx only once the
downstream has taken the message, its 5xx passed through, and a downstream that is down or
slow becomes our 451. We never hold a message the next hop has not taken, so we can never owe
anyone a bounce.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

from scattergate.address import Address
from scattergate.delivery.smtp_client import Response, SmtpClientError, SmtpConnection, encode_content
from scattergate.model import Reply
from scattergate.logfmt import quote

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATUS = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


def downstream_reply(code: int, message: str, *, prefix: str = "") -> Reply:
    """Turn a downstream reply into ours: keep its code and enhanced status, one line of text."""
    text = " ".join(message.split())
    match = _STATUS.match(text)
    if match:
        status, text = match.group(1), text[match.end():]
    else:
        status = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "")
    if status and status[0] != str(code)[0]:
        status = ""  # a downstream that mixes classes: keep its code, drop the odd status
    return Reply(code, status, f"{prefix}{text}" if prefix else text or "(no text)")


class DownstreamUnavailable(Exception):
    """Could not connect to, or talk to, the downstream. `reply`: a more specific 4xx than
    "unavailable" (e.g. TLS required but not possible)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


# RFC 3463 X.7.4 "security features not supported", X.7.5 "cryptographic failure" (as Postfix).
_TLS_NOT_OFFERED = Reply(451, "4.7.4", "TLS is required, but the downstream does not offer it; try again later")
_TLS_FAILED = Reply(451, "4.7.5", "TLS with the downstream failed (certificate not verified?); try again later")


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """STARTTLS towards a downstream: "none", "opportunistic" or "required"."""

    mode: str = "none"
    context: ssl.SSLContext | None = None
    # The name its certificate must carry; empty: the host we connect to.
    server_name: str = ""


def downstream_tls(mode: str, *, verify: bool, ca_file: str, server_name: str = "") -> DownstreamTls:
    """The delivery.tls* settings as a DownstreamTls (the context is built once, shared by connections)."""
    if mode == "none":
        return DownstreamTls()
    from scattergate.net.tls import checked_client_context

    # Opportunistic TLS never checks the certificate: a failed check would only send the
    # message in clear text instead, which is worse than unauthenticated encryption.
    context = checked_client_context(verify=verify and mode == "required", ca_file=ca_file)
    return DownstreamTls(mode, context, server_name)


class DownstreamPool:
    """A small pool of open SMTP connections to one downstream.

    A pooled connection may have been closed by the downstream while idle; a transaction that
    fails on a reused connection *before the content is sent* is retried once on a fresh one
    (nothing was handed over yet, so the retry cannot duplicate mail).
    """

    def __init__(self, host: str, port: int, *, size: int, timeout: float, local_hostname: str,
                 tls: DownstreamTls = DownstreamTls()) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._idle: list[SmtpConnection] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self, *, tls: bool = True) -> SmtpConnection:
        try:
            client = await SmtpConnection.open(self.host, self.port, timeout=self._timeout,
                                               local_hostname=self._local_hostname)
        except SmtpClientError as exc:
            raise DownstreamUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        if tls and self.tls.mode != "none":
            return await self._start_tls(client)
        return client

    async def _start_tls(self, client: SmtpConnection) -> SmtpConnection:
        """STARTTLS on a new connection, as `tls.mode` asks; the pool only ever holds its result."""
        where = f"{self.host}:{self.port}"
        if not client.supports("starttls"):
            if self.tls.mode == "required":
                client.close()
                raise DownstreamUnavailable(f"{where} does not offer STARTTLS (delivery.tls = required)",
                                            _TLS_NOT_OFFERED)
            return client
        assert self.tls.context is not None
        try:
            await client.starttls(self.tls.context, self.tls.server_name or self.host)
            return client
        except OSError as exc:  # SmtpClientError and ssl.SSLError are OSErrors
            client.close()
            if self.tls.mode == "required":
                raise DownstreamUnavailable(f"STARTTLS with {where} failed: {exc}", _TLS_FAILED) from exc
            # Opportunistic: a failed handshake falls back to clear text, as MTAs do (not
            # delivering at all is what "required" is for).
            log.warning("opportunistic STARTTLS with %s failed (%s): delivering without TLS", where, quote(str(exc)))
        return await self._connect(tls=False)

    async def acquire(self) -> tuple[SmtpConnection, bool]:
        """A connection, and whether it was reused from the pool."""
        await self._slots.acquire()
        try:
            while self._idle:
                client = self._idle.pop()
                if client.is_connected:
                    return client, True
                client.close()
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    async def transact(self, transaction: Callable[[SmtpConnection], Awaitable[T]],
                       deadline_at: float = float("inf")) -> T:
        """Run `transaction` on a pooled connection. If it raises _RetryableFailure (the
        connection failed before anything was handed over) on a reused connection, which the
        downstream may have dropped while it was idle, run it once more on a fresh one; a
        failure that remains is DownstreamUnavailable. Other errors propagate as they are.
        `deadline_at`: the loop time at which the caller's own timeout cancels the transaction."""
        for attempt in (1, 2):
            client, reused = await self.acquire()
            reusable = False
            client.outer_deadline = deadline_at
            try:
                result = await transaction(client)
                reusable = True  # release() still drops it if it was closed (e.g. after a 354)
                return result
            except _RetryableFailure as exc:
                if reused and attempt == 1:
                    continue
                raise DownstreamUnavailable(str(exc)) from exc
            finally:
                client.outer_deadline = float("inf")
                self.release(client, reusable=reusable)
        raise AssertionError("unreachable")

    def release(self, client: SmtpConnection, *, reusable: bool) -> None:
        if reusable and client.is_connected:
            self._idle.append(client)
        else:
            client.close()
        self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                async with asyncio.timeout(2):
                    await client.quit()
            except (OSError, TimeoutError):
                client.close()


@dataclass(frozen=True, slots=True)
class RelayResult:
    reply: Reply
    # Per-recipient refusals from the downstream (RCPT stage), for the log.
    refused: tuple[tuple[str, Reply], ...] = ()


_DOWN = Reply(451, "4.4.1", "Downstream mail server unavailable, try again later")
_SLOW = Reply(451, "4.4.2", "Downstream mail server did not answer in time, try again later")


def _failure_reply(exc: BaseException) -> Reply:
    """Our 4xx for a downstream that failed: out of time, or unavailable (or the more specific
    reply a DownstreamUnavailable carries, e.g. TLS required but not possible)."""
    if isinstance(exc, TimeoutError):
        return _SLOW
    if isinstance(exc, DownstreamUnavailable) and exc.reply is not None:
        return exc.reply
    return _DOWN


# DATA left unanswered (not sent: a guard, since the envelope sends it once recipients are in).
_NO_DATA_REPLY = Response(451, "4.4.0 no reply to DATA")
# A non-ASCII address on a message that did not come with SMTPUTF8 (intake refuses those).
_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")


_SOME_REFUSED = Reply(451, "4.5.3", "Some recipients refused downstream, try again later")


def one_reply_for(recipients: int, refusals: Sequence[Reply]) -> Reply:
    """The one reply for a message of which the downstream refused some recipients at RCPT.

    One reply must answer for every recipient. Relaying to only some of them would leave us
    owing a bounce for the others, so nothing is relayed: if the downstream refused them all
    permanently, so do we (its first refusal); otherwise the client retries later (the
    downstream's temporary refusal, or 451 4.5.3)."""
    if len(refusals) == recipients and all(r.code >= 500 for r in refusals):
        return refusals[0]
    temporary = next((r for r in refusals if 400 <= r.code < 500), None)
    return temporary or _SOME_REFUSED


class Relay:
    def __init__(self, pool: DownstreamPool) -> None:
        self.pool = pool

    async def send(
        self,
        sender: Address,
        recipients: Sequence[Address],
        content: bytes,
        *,
        mail_options: Sequence[str] = (),
        smtputf8: bool = False,
        deadline: float,
        dsn: "DsnParams | None" = None,
    ) -> RelayResult:
        try:
            async with asyncio.timeout(deadline) as scope:
                return await self._send(sender, recipients, content, mail_options, smtputf8, dsn, scope.when())
        except TimeoutError as exc:
            log.warning("downstream %s:%s timed out after %.1f s", self.pool.host, self.pool.port, deadline)
            return RelayResult(_failure_reply(exc))
        except DownstreamUnavailable as exc:
            log.warning("%s", quote(str(exc)))
            return RelayResult(_failure_reply(exc))

    async def _send(
        self,
        sender: Address,
        recipients: Sequence[Address],
        content: bytes,
        mail_options: Sequence[str],
        smtputf8: bool,
        dsn: "DsnParams | None",
        deadline_at: float = float("inf"),
    ) -> RelayResult:
        return await self.pool.transact(
            lambda client: self._transaction(client, sender, recipients, content, mail_options, smtputf8, dsn),
            deadline_at)

    async def _transaction(
        self,
        client: SmtpConnection,
        sender: Address,
        recipients: Sequence[Address],
        content: bytes,
        mail_options: Sequence[str],
        smtputf8: bool,
        dsn: "DsnParams | None",
    ) -> RelayResult:
        options = list(mail_options)
        if dsn is not None:
            options += dsn_mail_options(client, dsn.ret, dsn.envid)
        try:
            mail = mail_argument(str(sender), options, smtputf8)
            rcpts = [
                rcpt_argument(str(rcpt), dsn_rcpt_options(client, *dsn.recipients[index])
                              if dsn is not None and index < len(dsn.recipients) else [], smtputf8)
                for index, rcpt in enumerate(recipients)
            ]
        except UnicodeEncodeError:
            return RelayResult(_NEEDS_SMTPUTF8)
        try:
            envelope = await client.envelope(mail, rcpts, data=True, all_or_nothing=True)
        except OSError as exc:  # nothing of the message has been sent yet
            raise _RetryableFailure(f"MAIL/RCPT failed: {exc}") from exc
        if not envelope.mail.ok:
            await _abandon(client, envelope.data)
            return RelayResult(downstream_reply(envelope.mail.code, envelope.mail.message))
        refused = [(str(rcpt), downstream_reply(reply.code, reply.message))
                   for rcpt, reply in zip(recipients, envelope.rcpts) if reply is not None and not reply.ok]
        if refused:
            await _abandon(client, envelope.data)
            return RelayResult(one_reply_for(len(recipients), [reply for _, reply in refused]), tuple(refused))
        if envelope.data is None or envelope.data.code != 354:
            await _abandon(client, envelope.data)
            data = envelope.data or _NO_DATA_REPLY
            return RelayResult(downstream_reply(data.code, data.message))
        try:
            response = await client.content(encode_content(content))
        except OSError as exc:
            # The connection broke after the content was sent: the downstream may or may not
            # have the message. 451 lets the client retry; at worst a duplicate, never a loss.
            raise DownstreamUnavailable(f"DATA failed: {exc}") from exc
        if response.code != 250:
            return RelayResult(downstream_reply(response.code, response.message))
        return RelayResult(downstream_reply(response.code, response.message, prefix="Ok: relayed: "))

    async def probe(self, recipient: Address, *, smtputf8: bool = False) -> Reply:
        """RCPT-probe one address with a null sender (Postfix-style address verification)."""
        try:
            rcpt = rcpt_argument(str(recipient), [], smtputf8)
        except UnicodeEncodeError:
            return _NEEDS_SMTPUTF8

        async def ask(client: SmtpConnection) -> Reply:
            try:  # nothing is ever handed over: any failure may be retried
                envelope = await client.envelope(b"FROM:<>", [rcpt], data=False)
                await client.rset()
            except OSError as exc:
                raise _RetryableFailure(f"probe failed: {exc}") from exc
            if not envelope.mail.ok or envelope.rcpts[0] is None:
                return downstream_reply(envelope.mail.code, envelope.mail.message)
            return downstream_reply(envelope.rcpts[0].code, envelope.rcpts[0].message)

        return await self.pool.transact(ask)


@dataclass(frozen=True, slots=True)
class DsnParams:
    """RFC 3461 parameters to pass on: RET/ENVID, and (NOTIFY, ORCPT) per recipient."""

    ret: str = ""
    envid: str = ""
    recipients: tuple[tuple[tuple[str, ...] | None, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outbound:
    """One recipient of a spooled delivery, with its RFC 3461 parameters."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str = ""


def dsn_mail_options(client: SmtpConnection, ret: str, envid: str) -> list[str]:
    """RET/ENVID for the downstream, only if it speaks DSN (else it would refuse MAIL)."""
    if not client.supports("dsn"):
        return []
    return ([f"RET={ret}"] if ret else []) + ([f"ENVID={envid}"] if envid else [])


def dsn_rcpt_options(client: SmtpConnection, notify: tuple[str, ...] | None, orcpt: str) -> list[str]:
    if not client.supports("dsn"):
        return []
    return ([f"NOTIFY={','.join(notify)}"] if notify else []) + ([f"ORCPT={orcpt}"] if orcpt else [])


def mail_argument(sender: str, options: Sequence[str], smtputf8: bool) -> bytes:
    """`FROM:<sender> OPTIONS…` (raises UnicodeEncodeError for a non-ASCII path without SMTPUTF8)."""
    return _path(b"FROM:", sender, options, smtputf8)


def rcpt_argument(recipient: str, options: Sequence[str], smtputf8: bool) -> bytes:
    return _path(b"TO:", recipient, options, smtputf8)


def _path(prefix: bytes, address: str, options: Sequence[str], smtputf8: bool) -> bytes:
    encoded = prefix + b"<" + address.encode("utf-8" if smtputf8 else "ascii") + b">"
    return b" ".join([encoded, *(option.encode("ascii") for option in options)])


async def deliver_each(
    pool: DownstreamPool,
    sender: str,
    recipients: Sequence[Outbound],
    content: bytes,
    *,
    ret: str = "",
    envid: str = "",
    smtputf8: bool = False,
    deadline: float,
    dsn_support: list[bool] | None = None,
) -> dict[str, Reply]:
    """Store-and-forward delivery: a reply per recipient (RCPT refusals stay per recipient).

    `dsn_support`, when given, receives whether the downstream speaks DSN (RFC 3461: if not,
    we owe NOTIFY=SUCCESS senders a "relayed" notice ourselves).

    Unlike the before-queue relay, the message is already ours, so the recipients the
    downstream accepts get it even if others are refused; the refused ones are reported.
    A connection failure or timeout gives every recipient a 4xx: delivered later.
    """
    replies: dict[str, Reply] = {}
    try:
        async with asyncio.timeout(deadline) as scope:
            await pool.transact(lambda client: _deliver_once(
                client, sender, recipients, content, replies, ret=ret, envid=envid, smtputf8=smtputf8,
                dsn_support=dsn_support), scope.when())
            return replies
    except (TimeoutError, DownstreamUnavailable, OSError) as exc:
        log.warning("spooled delivery to %s:%s failed: %s", pool.host, pool.port, quote(str(exc)))
        failure = _failure_reply(exc)
        # Recipients refused at RCPT keep their reply: only the unanswered ones are retried.
        return {r.address: replies.get(r.address, failure) for r in recipients}


async def _deliver_once(client: SmtpConnection, sender: str, recipients: Sequence[Outbound], content: bytes,
                        replies: dict[str, Reply], *, ret: str, envid: str, smtputf8: bool,
                        dsn_support: list[bool] | None) -> None:
    """One transaction of `deliver_each`, its replies into `replies`. Raises _RetryableFailure
    if the connection failed before the content left."""
    replies.clear()  # a retry on a fresh connection starts over
    try:
        mail = mail_argument(sender, dsn_mail_options(client, ret, envid), smtputf8)
        rcpts = [rcpt_argument(r.address, dsn_rcpt_options(client, r.notify, r.orcpt), smtputf8)
                 for r in recipients]
    except UnicodeEncodeError:
        replies.update((r.address, _NEEDS_SMTPUTF8) for r in recipients)
        return
    try:
        envelope = await client.envelope(mail, rcpts, data=True)
    except OSError as exc:
        raise _RetryableFailure(f"MAIL/RCPT failed: {exc}") from exc
    if dsn_support is not None:
        dsn_support[:] = [client.supports("dsn")]
    if not envelope.mail.ok:
        await _abandon(client, envelope.data)
        reply = downstream_reply(envelope.mail.code, envelope.mail.message)
        replies.update((r.address, reply) for r in recipients)
        return
    accepted = []
    for rcpt, response in zip(recipients, envelope.rcpts):
        if response is not None and response.ok:
            accepted.append(rcpt.address)
        elif response is not None:
            replies[rcpt.address] = downstream_reply(response.code, response.message)
    if not accepted or envelope.data is None or envelope.data.code != 354:
        await _abandon(client, envelope.data)
        if accepted:
            data = envelope.data or _NO_DATA_REPLY
            reply = downstream_reply(data.code, data.message)
            replies.update((address, reply) for address in accepted)
        return
    response = await client.content(encode_content(content))  # a failure here is not retried
    reply = downstream_reply(response.code, response.message)
    replies.update((address, reply) for address in accepted)


class _RetryableFailure(Exception):
    pass


async def _abandon(client: SmtpConnection, data: Response | None) -> None:
    """End a transaction that will not be completed. After a 354 the downstream waits for
    content: only closing the connection cancels the message (it is then not reused)."""
    if data is not None and data.code == 354:
        client.close()
    else:
        await client.rset()
