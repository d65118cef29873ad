"""Before-queue relay to the downstream MTA, over pooled connections (aiosmtplib).

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
from typing import Sequence

import aiosmtplib

from scattergate.address import Address
from scattergate.model import Reply

log = logging.getLogger(__name__)

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

    A pooled connection may have been closed by the downstream while idle; a command that
    fails on a reused connection *before DATA* is retried once on a fresh one (nothing was
    handed over yet, so the retry cannot duplicate mail).
    """

    def __init__(self, host: str, port: int, *, size: int, timeout: float, local_hostname: str,
                 tls: DownstreamTls = DownstreamTls()) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(size)

    async def _connect(self, *, tls: bool = True) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            local_hostname=self._local_hostname,
            start_tls=False,
        )
        try:
            await client.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DownstreamUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        if tls and self.tls.mode != "none":
            return await self._start_tls(client)
        return client

    async def _start_tls(self, client: aiosmtplib.SMTP) -> aiosmtplib.SMTP:
        """STARTTLS on a new connection, as `tls.mode` asks; the pool only ever holds its result."""
        where = f"{self.host}:{self.port}"
        try:
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise DownstreamUnavailable(f"EHLO to {where} failed: {exc}") from exc
        if not client.supports_extension("starttls"):
            if self.tls.mode == "required":
                client.close()
                raise DownstreamUnavailable(f"{where} does not offer STARTTLS (delivery.tls = required)",
                                            _TLS_NOT_OFFERED)
            return client
        try:
            await client.starttls(tls_context=self.tls.context, server_hostname=self.tls.server_name or self.host)
            return client
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            if self.tls.mode == "required":
                raise DownstreamUnavailable(f"STARTTLS with {where} failed: {exc}", _TLS_FAILED) from exc
            # Opportunistic: a failed handshake falls back to clear text, as MTAs do (not
            # delivering at all is what "required" is for).
            log.warning("opportunistic STARTTLS with %s failed (%s): delivering without TLS", where, exc)
        return await self._connect(tls=False)

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection, and whether it was reused from the pool."""
        await self._slots.acquire()
        try:
            while self._idle:
                client = self._idle.pop()
                if client.is_connected:
                    return client, True
            return await self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def release(self, client: aiosmtplib.SMTP, *, reusable: bool) -> None:
        if reusable and client.is_connected:
            self._idle.append(client)
        else:
            client.close()
        self._slots.release()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


@dataclass(frozen=True, slots=True)
class RelayResult:
    reply: Reply
    # Per-recipient refusals from the downstream (RCPT stage), for the log.
    refused: tuple[tuple[str, Reply], ...] = ()


_DOWN = Reply(451, "4.4.1", "Downstream mail server unavailable, try again later")
_SLOW = Reply(451, "4.4.2", "Downstream mail server did not answer in time, try again later")


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
            async with asyncio.timeout(deadline):
                return await self._send(sender, recipients, content, mail_options, smtputf8, dsn)
        except TimeoutError:
            log.warning("downstream %s:%s timed out after %.1f s", self.pool.host, self.pool.port, deadline)
            return RelayResult(_SLOW)
        except DownstreamUnavailable as exc:
            log.warning("%s", exc)
            return RelayResult(exc.reply or _DOWN)

    async def _send(
        self,
        sender: Address,
        recipients: Sequence[Address],
        content: bytes,
        mail_options: Sequence[str],
        smtputf8: bool,
        dsn: "DsnParams | None",
    ) -> RelayResult:
        for attempt in (1, 2):
            client, reused = await self.pool.acquire()
            reusable = False
            try:
                result = await self._transaction(client, sender, recipients, content, mail_options, smtputf8, dsn)
                reusable = True  # release() still drops it if the downstream hung up
                return result
            except _RetryableFailure as exc:
                if reused and attempt == 1:
                    continue  # stale pooled connection: nothing was handed over, try a fresh one
                raise DownstreamUnavailable(str(exc)) from exc
            finally:
                self.pool.release(client, reusable=reusable)
        raise AssertionError("unreachable")

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        sender: Address,
        recipients: Sequence[Address],
        content: bytes,
        mail_options: Sequence[str],
        smtputf8: bool,
        dsn: "DsnParams | None",
    ) -> RelayResult:
        encoding = "utf-8" if smtputf8 else "ascii"
        options = list(mail_options)
        try:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            if dsn is not None:
                options += dsn_mail_options(client, dsn.ret, dsn.envid)
            await client.mail(str(sender), options=options, encoding=encoding)
        except aiosmtplib.SMTPSenderRefused as exc:
            await _reset(client)
            return RelayResult(downstream_reply(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _RetryableFailure(f"MAIL failed: {exc}") from exc
        refused: list[tuple[str, Reply]] = []
        for index, rcpt in enumerate(recipients):
            rcpt_options: list[str] = []
            if dsn is not None and index < len(dsn.recipients):
                rcpt_options = dsn_rcpt_options(client, *dsn.recipients[index])
            try:
                await client.rcpt(str(rcpt), options=rcpt_options, encoding=encoding)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append((str(rcpt), downstream_reply(exc.code, exc.message)))
            except (aiosmtplib.SMTPException, OSError) as exc:
                raise DownstreamUnavailable(f"RCPT failed: {exc}") from exc
        if refused:
            # One reply must answer for every recipient. Relaying to only some of them would
            # leave us owing a bounce for the others, so nothing is relayed: if the downstream
            # refused them all permanently, so do we; otherwise the client retries later.
            await _reset(client)
            replies = [reply for _, reply in refused]
            if len(refused) == len(recipients) and all(r.code >= 500 for r in replies):
                return RelayResult(replies[0], tuple(refused))
            temp = next((r for r in replies if r.code < 500), None)
            reply = temp or Reply(451, "4.5.3", "Some recipients refused downstream, try again later")
            if reply.code >= 500 or reply.code < 400:
                reply = Reply(451, "4.5.3", "Some recipients refused downstream, try again later")
            return RelayResult(reply, tuple(refused))
        try:
            response = await client.data(content)
        except aiosmtplib.SMTPDataError as exc:
            return RelayResult(downstream_reply(exc.code, exc.message))
        except (aiosmtplib.SMTPException, OSError) as exc:
            # The connection broke after DATA was sent: the downstream may or may not have
            # the message. 451 lets the client retry; at worst a duplicate, never a loss.
            raise DownstreamUnavailable(f"DATA failed: {exc}") from exc
        return RelayResult(downstream_reply(response.code, response.message, prefix="Ok: relayed: "))

    async def probe(self, recipient: Address, *, smtputf8: bool = False) -> Reply:
        """RCPT-probe one address with a null sender (Postfix-style address verification)."""
        for attempt in (1, 2):
            client, reused = await self.pool.acquire()
            reusable = False
            try:
                encoding = "utf-8" if smtputf8 else "ascii"
                try:
                    await client.mail("", encoding=encoding)
                except aiosmtplib.SMTPSenderRefused as exc:
                    await _reset(client)
                    reusable = True
                    return downstream_reply(exc.code, exc.message)
                try:
                    response = await client.rcpt(str(recipient), encoding=encoding)
                    reply = downstream_reply(response.code, response.message)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    reply = downstream_reply(exc.code, exc.message)
                await _reset(client)
                reusable = True
                return reply
            except (aiosmtplib.SMTPException, OSError) as exc:
                if reused and attempt == 1:
                    continue
                raise DownstreamUnavailable(f"probe failed: {exc}") from exc
            finally:
                self.pool.release(client, reusable=reusable)
        raise AssertionError("unreachable")


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


def dsn_mail_options(client: aiosmtplib.SMTP, ret: str, envid: str) -> list[str]:
    """RET/ENVID for the downstream, only if it speaks DSN (else it would refuse MAIL)."""
    if not client.supports_extension("dsn"):
        return []
    return ([f"RET={ret}"] if ret else []) + ([f"ENVID={envid}"] if envid else [])


def dsn_rcpt_options(client: aiosmtplib.SMTP, notify: tuple[str, ...] | None, orcpt: str) -> list[str]:
    if not client.supports_extension("dsn"):
        return []
    return ([f"NOTIFY={','.join(notify)}"] if notify else []) + ([f"ORCPT={orcpt}"] if orcpt else [])


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
        async with asyncio.timeout(deadline):
            client, _ = await pool.acquire()
            reusable = False
            try:
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
                if dsn_support is not None:
                    dsn_support.append(client.supports_extension("dsn"))
                encoding = "utf-8" if smtputf8 else "ascii"
                try:
                    await client.mail(sender, options=dsn_mail_options(client, ret, envid), encoding=encoding)
                except aiosmtplib.SMTPSenderRefused as exc:
                    await _reset(client)
                    reusable = True
                    reply = downstream_reply(exc.code, exc.message)
                    return {r.address: reply for r in recipients}
                accepted = []
                for rcpt in recipients:
                    try:
                        await client.rcpt(
                            rcpt.address, options=dsn_rcpt_options(client, rcpt.notify, rcpt.orcpt), encoding=encoding
                        )
                        accepted.append(rcpt.address)
                    except aiosmtplib.SMTPRecipientRefused as exc:
                        replies[rcpt.address] = downstream_reply(exc.code, exc.message)
                if not accepted:
                    await _reset(client)
                    reusable = True
                    return replies
                try:
                    response = await client.data(content)
                    reply = downstream_reply(response.code, response.message)
                except aiosmtplib.SMTPDataError as exc:
                    reply = downstream_reply(exc.code, exc.message)
                for address in accepted:
                    replies[address] = reply
                reusable = True
                return replies
            finally:
                pool.release(client, reusable=reusable)
    except (TimeoutError, DownstreamUnavailable, aiosmtplib.SMTPException, OSError) as exc:
        log.warning("spooled delivery to %s:%s failed: %s", pool.host, pool.port, exc)
        failure = _SLOW if isinstance(exc, TimeoutError) else _DOWN
        if isinstance(exc, DownstreamUnavailable) and exc.reply is not None:
            failure = exc.reply
        # Recipients refused at RCPT keep their reply: only the unanswered ones are retried.
        return {r.address: replies.get(r.address, failure) for r in recipients}


class _RetryableFailure(Exception):
    pass


async def _reset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
