"""The milter front end: Postfix (or Sendmail) asks, the Gateway decides, the MTA delivers.

`MilterConnection` is the per-connection state machine: typed commands in (milter_codec),
typed responses out, the Gateway in between. It never delivers: Postfix does. The socket loop
around it is small (`serve_connection`).

The never-bounce trick: mail that Postfix must accept but whose sender we could not verify is
re-addressed with NOTIFY=NEVER on every recipient (SMFIR_DELRCPT + SMFIR_ADDRCPT_PAR, Postfix
≥ 3.0), so if delivery fails later Postfix drops the DSN instead of sending it to a sender who
is probably forged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import socket
from typing import Awaitable, Callable, Iterable, Sequence

from scattergate.address import AddressError, parse_path
from scattergate.config import Config
from scattergate.decision.sender_proof import envelope_proof
from scattergate.frontends import milter_codec as mc
from scattergate.frontends.postfix_side import PostfixTrust, for_postfix
from scattergate.logfmt import SessionLog, fields
from scattergate.model import (Accept, Envelope, Finding, Phase, Quarantine, RcptDsn, Reject, Reply, Session,
                               Tempfail, Verdict)
from scattergate.pipeline import Gateway

log = logging.getLogger(__name__)

# What we may do to a message: headers, recipients (never-bounce), hold, change sender (BATV).
WANTED_ACTIONS = (mc.ACT_ADDHDRS | mc.ACT_ADDRCPT | mc.ACT_ADDRCPT_PAR | mc.ACT_DELRCPT
                  | mc.ACT_QUARANTINE | mc.ACT_CHGFROM | mc.ACT_SETSYMLIST)
# The only macros we read say whether the client is one of our users: {daemon_name} at
# connect (master.cf: `-o milter_macro_daemon_name=ORIGINATING` on submission) and
# {auth_authen} at MAIL (a SASL client). Postfix otherwise expands and sends a dozen macros at
# every step; asking for just these (SMFIF_SETSYMLIST) saves it that work and us their
# decoding. Postfix sends a macro packet before every event even when the list is empty
# (then it sends its default list, milter_*_macros), so for the other stages we name a macro
# nobody defines: the packet comes, empty. Naming "j" instead sent the host name before every
# header and body chunk (11 non-empty packets a message to decode).
NO_MACRO = "{scattergate_none}"
WANTED_MACROS = {mc.STAGE_CONNECT: "{daemon_name}", mc.STAGE_HELO: NO_MACRO, mc.STAGE_MAIL: "{auth_authen}",
                 mc.STAGE_RCPT: NO_MACRO, mc.STAGE_DATA: NO_MACRO, mc.STAGE_EOH: NO_MACRO, mc.STAGE_EOM: NO_MACRO}
# Steps we don't need, and steps whose answer can wait. We decide only at RCPT and at end of
# message, so every other step is negotiated "no reply": Postfix does not wait for us, and we
# write nothing — on a loopback socket every reply is a send() and a wake-up of Postfix, which
# under load cost more than our checks (profiled with py-spy: 30% of the milter's CPU was
# writing replies). A refusal found at a silent step (a connection limit at Connect, a path we
# cannot parse at MAIL) is kept and given at the next step that is answered: each RCPT, or the
# end of the message. Over TCP an unanswered packet could wait for our delayed ACK (Nagle on
# Postfix's side, ~40 ms: ENVIRONMENT.md), so the socket loop acknowledges at once
# (TCP_QUICKACK after every read it does not answer; an answer carries the ACK).
# DATA and end of headers carry nothing we use: not sent at all (SMFIP_NODATA, NOEOH).
WANTED_PROTOCOL = mc.P_NOUNKNOWN | mc.P_NODATA | mc.P_NOEOH | mc.P_HDR_LEADSPC
NO_REPLY = {mc.P_NR_CONN: mc.Connect, mc.P_NR_HELO: mc.Helo, mc.P_NR_MAIL: mc.Mail,
            mc.P_NR_DATA: mc.Data, mc.P_NR_HDR: mc.Header, mc.P_NR_EOH: mc.EndOfHeaders,
            mc.P_NR_BODY: mc.Body, mc.P_NR_UNKN: mc.Unknown}

# The answer to most steps, built and encoded once: it is the same for every message.
CONTINUE = mc.Continue()
CONTINUE_PACKET = mc.encode(CONTINUE)

INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error, try again later")
BAD_ADDRESS = Reply(553, "5.1.7", "Malformed address")
# Said in the decision line and counted: this message's failures will never be bounced.
DSN_SUPPRESSED = Finding("dsn", "suppressed", "NOTIFY=NEVER: sender not proven")
# Milter buffers of all connections past postfix.milter_memory_limit ("*.error": tempfail).
MEMORY_FULL = Finding("memory", "error", "milter buffers full")
# Postfix hands mail submitted with sendmail(1) to non_smtpd_milters as a connection from
# "localhost", a loopback address and port 0, which no TCP client can have: our own mail.
LOCAL_SUBMISSION_HOST = "localhost"


class MemoryBudget:
    """Message bytes held by all milter connections of a process, bounded: a flood of large
    messages is refused (tempfail) instead of growing the process without limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, amount: int) -> bool:
        if self.used + amount > self.limit:
            return False
        self.used += amount
        return True

    def give(self, amount: int) -> None:
        self.used -= amount

# Outbound sender rewriting (BATV): given the session and envelope of a trusted client's
# message, return the new MAIL FROM (e.g. prvs=...) or None to leave it (SMFIR_CHGFROM).
SenderRewriter = Callable[[Session, Envelope], str | None]


def batv_signer(gateway: Gateway) -> SenderRewriter | None:
    """The Gateway's outbound BATV signing (outbound.py) as a SenderRewriter (None when the
    Gateway marks no outbound mail)."""
    outbound = getattr(gateway, "outbound", None)
    if outbound is None:
        return None

    def sign(session: Session, envelope: Envelope) -> str | None:
        signed = outbound.sign(envelope.sender)
        return str(signed) if signed != envelope.sender else None

    return sign


# -- the never-bounce predicate (pure) ---------------------------------------------------------

def needs_never_bounce(session: Session, envelope: Envelope) -> bool:
    """Should Postfix be told never to send a DSN for this message?

    Not for the null sender (Postfix never bounces a bounce anyway), not for our own trusted
    clients (they are not forged, and must learn of failures), not for a sender the one
    sender-proof rule (decision/sender_proof.py) finds genuine."""
    if envelope.sender.is_null or session.trusted:
        return False
    return not envelope_proof(envelope).proven


def _params(options: Iterable[str]) -> dict[str, str]:
    """ESMTP parameters of MAIL/RCPT as Postfix passes them ("NOTIFY=NEVER", "BODY=8BITMIME")."""
    return {k.upper(): v for k, _, v in (o.partition("=") for o in options)}


def never_bounce_edits(recipients: Sequence[tuple[str, tuple[str, ...]]]) -> list[mc.Response]:
    """Delete each recipient, then add it back with NOTIFY=NEVER (other parameters kept).
    Delete first: Postfix deletes every recipient matching the address."""
    edits: list[mc.Response] = []
    for path, options in recipients:
        kept = tuple(o for o in options if o.split("=", 1)[0].upper() != "NOTIFY")
        if any(o.upper() == "NOTIFY=NEVER" for o in options):
            continue
        edits.append(mc.DeleteRecipient(path))
        edits.append(mc.AddRecipient(path, kept + ("NOTIFY=NEVER",)))
    return edits


# -- the state machine -------------------------------------------------------------------------

class MilterConnection:
    """One milter connection (one SMTP session at a time; 'K' starts the next)."""

    def __init__(self, gateway: Gateway, *, never_bounce: bool = True, no_reply: bool = True,
                 rewrite_sender: SenderRewriter | None = None, memory: MemoryBudget | None = None,
                 trust: PostfixTrust | None = None) -> None:
        self.gateway = gateway
        self.trust = trust or PostfixTrust(gateway, gateway.config)
        server = gateway.config.server
        self.max_size, self.max_header_size = server.max_message_size, server.max_header_size
        self.memory = memory or MemoryBudget(gateway.config.postfix.milter_memory_limit)
        self.held = 0  # bytes of this message we hold (taken from self.memory)
        self.want_no_reply = no_reply
        self.silent: tuple[type, ...] = ()  # commands the MTA expects no reply to
        self.never_bounce = never_bounce
        self.rewrite_sender = rewrite_sender
        self.actions = 0
        self.macros: dict[str, str] = {}
        self.session: Session | None = None
        self._log_id: str | None = None  # the session the log lines name (the last connected)
        self._session_log: SessionLog | None = None
        self._counted = False
        self.leading_space = False  # negotiated: header values keep their leading space
        # Refusals found at a step Postfix expects no answer to, given at the next answered one:
        # for the whole session (Connect, HELO) or for the current transaction (MAIL onwards).
        self.session_refusal: mc.Response | None = None
        self.transaction_refusal: mc.Response | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.recipients: list[tuple[str, tuple[str, ...]]] = []  # as Postfix gave them
        self.mail_path = ""  # MAIL FROM as Postfix gave it (for the record of a refusal)
        self._drop_content()
        self.size = self.header_size = 0
        self.oversize: Finding | None = None  # why the content was dropped, said at end of message

    def _drop_content(self) -> None:
        self.headers: list[bytes] = []
        self.body: list[bytes] = []
        if self.held:
            self.memory.give(self.held)
        self.held = 0

    def _keep(self, part: list[bytes], data: bytes, *, header: bool = False) -> None:
        """Buffer a piece of the message within the size limits and the memory budget; past
        them, drop what we hold and remember why (refused at end of message)."""
        self.size += len(data)
        if header:
            self.header_size += len(data)
        if self.oversize is not None:
            return
        if self.size > self.max_size:
            self.oversize = Finding("message", "too_large", f"more than {self.max_size} bytes")
        elif self.header_size > self.max_header_size:
            self.oversize = Finding("message", "header_too_large", f"more than {self.max_header_size} bytes")
        elif not self.memory.take(len(data)):
            self.oversize = MEMORY_FULL
        if self.oversize is not None:
            self._drop_content()
            return
        self.held += len(data)
        part.append(data)

    def close(self) -> None:
        """The SMTP session is over: release the gateway's connection count."""
        if self._counted and self.session is not None:
            self.gateway.disconnect(self.session)
        self._counted = False
        self.session = None
        self.session_refusal = None
        self._reset_message()

    def handle_now(self, command: mc.Command) -> list[mc.Response] | None | object:
        """Responses to a command that needs no waiting (macros, headers, body chunks, HELO,
        ...), without a coroutine: most packets of a message are these, and creating and
        awaiting two coroutines per packet cost more than handling it. LATER: the command
        needs `handle_later` (it asks the Gateway)."""
        if type(command) is mc.Macros:  # nearly every other packet; never answered
            try:
                self.take_macros(command)
            except Exception:
                return self._failed(command)
            return []
        try:
            responses = self._dispatch_now(command)
        except Exception:
            responses = self._failed(command)
        if responses is LATER:
            return LATER
        return self._answer(command, responses)  # type: ignore[arg-type]

    async def handle_later(self, command: mc.Command) -> list[mc.Response] | None:
        """Responses to a command `handle_now` left (Connect, MAIL, RCPT, end of message)."""
        try:
            responses = await self._dispatch(command)
        except Exception:
            responses = self._failed(command)
        return self._answer(command, responses)

    async def handle(self, command: mc.Command) -> list[mc.Response] | None:
        """Responses to one command ([] when the protocol wants none); None: close."""
        responses = self.handle_now(command)
        if responses is LATER:
            return await self.handle_later(command)
        return responses  # type: ignore[return-value]

    def _failed(self, command: mc.Command) -> list[mc.Response] | None:
        # Never a crash and never a silent accept: the client is told to try again.
        self.log.exception("milter: error handling %s", type(command).__name__)
        if isinstance(command, (mc.Macros, mc.Abort, mc.OptNeg, mc.Quit)):
            return None  # no reply expected: close, Postfix applies milter_default_action
        return [mc.TempfailReply(INTERNAL_ERROR)]

    def _answer(self, command: mc.Command, responses: list[mc.Response] | None) -> list[mc.Response] | None:
        if self.silent and isinstance(command, self.silent):
            if responses and responses != _CONTINUED:
                self._keep_refusal(command, responses)
            return []
        return responses

    def _keep_refusal(self, command: mc.Command, responses: list[mc.Response]) -> None:
        """A silent step refused: remember it for the next step Postfix waits for."""
        refusal = next((r for r in responses if isinstance(r, (mc.RejectReply, mc.TempfailReply))), None)
        if refusal is None:
            return
        if isinstance(command, (mc.Connect, mc.Helo)):
            self.session_refusal = self.session_refusal or refusal
        else:
            self.transaction_refusal = self.transaction_refusal or refusal

    def _pending_refusal(self) -> mc.Response | None:
        return self.session_refusal or self.transaction_refusal

    def _give(self, refusal: mc.Response, phase: Phase, recipients: Sequence[str]) -> list[mc.Response]:
        """A refusal the Gateway did not decide at this step (kept from a silent one, or an
        address we cannot parse), recorded like any decision: one line, one record each."""
        reply = getattr(refusal, "reply", None)
        if self.session is not None and reply is not None:
            verdict = (Reject if isinstance(refusal, mc.RejectReply) else Tempfail)(
                reply, (Finding("milter", "refused", f"{reply.code} {reply.status}"),))
            self.gateway.recorder.record(self.session, phase, self.mail_path, recipients, verdict)
        return [refusal]

    def _dispatch_now(self, command: mc.Command) -> list[mc.Response] | None | object:
        # Headers and body chunks come several times per message, macros before nearly every
        # command: tested first.
        match command:
            case mc.Header(name, value):
                sep = ":" if self.leading_space else ": "
                raw = f"{name}{sep}{value}".encode("utf-8", "surrogateescape")
                if b"\n" in raw:
                    # Folded headers arrive with bare LF between lines: restore the wire form.
                    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                self._keep(self.headers, raw + b"\r\n", header=True)
                return _CONTINUED
            case mc.Body(chunk):
                self._keep(self.body, chunk)
                return _CONTINUED
            case mc.Macros():
                self.take_macros(command)
                return []
        match command:
            case mc.OptNeg(version, actions, protocol):
                return [self._negotiate(version, actions, protocol)]
            case mc.Helo(name):
                if self.session is not None:
                    self.session.helo = name
                return _CONTINUED
            case mc.Abort():
                self._end_transaction()
                return []
            case mc.Quit(new_connection):
                self.close()
                self.macros.clear()
                return [] if new_connection else None
            case mc.Data() | mc.EndOfHeaders() | mc.Unknown():
                return _CONTINUED
            case mc.Connect() | mc.Mail() | mc.Rcpt() | mc.EndOfMessage():
                return LATER
        raise mc.MilterProtocolError(f"unexpected command {command!r}")

    def take_macros(self, command: mc.Macros) -> None:
        if command.command == "M":  # what a previous transaction said about SASL must not linger
            self.macros = {k: v for k, v in self.macros.items() if not k.startswith("{auth_")}
        self.macros.update(command.values)

    async def _dispatch(self, command: mc.Command) -> list[mc.Response] | None:
        match command:
            case mc.Connect(hostname, family, port, address):
                return await self._connect(address if family in ("4", "6") else "unknown", port, hostname)
            case mc.Mail(path, options):
                return await self._mail(path, options)
            case mc.Rcpt(path, options):
                return await self._rcpt(path, options)
            case mc.EndOfMessage(chunk):
                if chunk:
                    self._keep(self.body, chunk)
                return await self._end_of_message()
        raise mc.MilterProtocolError(f"unexpected command {command!r}")

    def _negotiate(self, version: int, actions: int, protocol: int) -> mc.Response:
        if version < 6 and not actions & mc.ACT_ADDRCPT_PAR:
            log.warning("milter: MTA speaks milter protocol %d: no NOTIFY=NEVER (needs Postfix >= 3.0)", version)
        if self.never_bounce and not actions & WANTED_ACTIONS & mc.ACT_ADDRCPT_PAR:
            log.warning("milter: MTA cannot add recipients with parameters: never-bounce is off")
        reply, self.silent = _negotiation(version, actions, protocol, self.want_no_reply)
        self.actions, self.leading_space = reply.actions, bool(reply.protocol & mc.P_HDR_LEADSPC)
        return reply

    async def _connect(self, ip: str, port: int, hostname: str = "") -> list[mc.Response]:
        self.close()  # a second Connect on one connection: forget the first session
        self.session = Session(client_ip=ip, client_port=port)
        self._log_id, self._session_log = self.session.id, None
        verdict = await self.gateway.connect(self.session)
        self._counted = True
        if _local_submission(hostname, ip, port) or self.trust.trusted_daemon(self.macros.get("{daemon_name}", "")):
            self.session.trusted = True
        if not isinstance(verdict, Accept):
            return [mc.refusal(verdict.reply)]
        return [CONTINUE]

    @property
    def log(self) -> logging.Logger | SessionLog:
        """The logger for this connection's lines: its session id on each, once connected.
        Built when first used: most sessions log nothing."""
        if self._log_id is None:
            return log
        if self._session_log is None:
            self._session_log = SessionLog(log, self._log_id)
        return self._session_log

    def _trusted(self) -> bool:
        # A SASL-authenticated client is one of ours, wherever it connects from.
        return bool(self.macros.get("{auth_authen}"))

    async def _mail(self, path: str, options: tuple[str, ...]) -> list[mc.Response]:
        session = self.session if self.session is not None else await self._session()
        self._end_transaction()
        self.mail_path = path
        try:
            sender = parse_path(path, allow_null=True)
        except AddressError:
            return [mc.RejectReply(BAD_ADDRESS)]
        if self._trusted():
            session.trusted = True
        params = _params(options)
        session.envelope = self.gateway.mail(session, sender, options,
                                             ret=params.get("RET", "").upper(), envid=params.get("ENVID", ""))
        return [CONTINUE]

    async def _rcpt(self, path: str, options: tuple[str, ...]) -> list[mc.Response]:
        if refusal := self._pending_refusal():
            return self._give(refusal, Phase.RCPT, (path,))
        session = self.session if self.session is not None else await self._session()
        envelope = session.envelope
        if envelope is None:
            return [CONTINUE]  # the MTA enforces sequencing; nothing to decide on
        try:
            recipient = parse_path(path)
        except AddressError:
            return self._give(mc.RejectReply(BAD_ADDRESS), Phase.RCPT, (path,))
        params = _params(options)
        notify = frozenset(params["NOTIFY"].upper().split(",")) if "NOTIFY" in params else None
        dsn = RcptDsn(notify, params.get("ORCPT", ""))
        self.trust.note_relay(session, recipient)
        verdict = await self.gateway.rcpt(session, envelope, recipient, dsn)
        if isinstance(verdict, (Accept, Quarantine)):
            self.recipients.append((path, options))
            envelope.rcpt_options.append(options)
            return [CONTINUE]
        return [mc.refusal(verdict.reply)]

    async def _end_of_message(self) -> list[mc.Response]:
        if refusal := self._pending_refusal():
            given = self._give(refusal, Phase.DATA, [path for path, _ in self.recipients])
            self._end_transaction()
            return given
        session = self.session if self.session is not None else await self._session()
        envelope = session.envelope
        if envelope is None:
            return [CONTINUE]
        content = b"".join(self.headers) + b"\r\n" + b"".join(self.body)
        recipients, oversize = self.recipients, self.oversize
        self._end_transaction()
        if oversize is not None:
            verdict = self.gateway.decider.decide([*envelope.rcpt_findings, oversize])
        else:
            verdict = await self.gateway.decide_data(session, envelope, content)
        suppress = (isinstance(verdict, (Accept, Quarantine)) and self._can_suppress_dsn()
                    and needs_never_bounce(session, envelope))
        if suppress:
            verdict = dataclasses.replace(verdict, findings=(*verdict.findings, DSN_SUPPRESSED))
        self.gateway.record_data(session, envelope, verdict)
        if not isinstance(verdict, (Accept, Quarantine)):
            return [mc.refusal(verdict.reply)]
        edits = self._edits(session, envelope, verdict, recipients)
        if suppress:
            edits.extend(never_bounce_edits(recipients))
            self.gateway.recorder.count("dsn.suppressed")
            if log.isEnabledFor(logging.INFO):  # the fields cost more than the call
                self.log.info("milter: DSNs suppressed (NOTIFY=NEVER), sender not proven: %s",
                              fields(sender=str(envelope.sender), recipients=len(recipients)))
        if session.trusted and self.rewrite_sender is not None:
            edits += await self._remember_outbound(envelope, content)
        return [*edits, CONTINUE]

    async def _remember_outbound(self, envelope: Envelope, content: bytes) -> list[mc.Response]:
        """Our user's mail: remember its Message-ID and carry the token, so that genuine
        bounces for it can prove they are ours (as `serve` does for its outbound mail)."""
        outbound = getattr(self.gateway, "outbound", None)
        if outbound is None or not self.actions & mc.ACT_ADDHDRS:
            return []
        header = await outbound.remember(envelope.sender, content)
        if header is None:
            return []
        name, value = header
        return [mc.InsertHeader(0, name, self._header_value(value))]

    def _header_value(self, value: str) -> str:
        """With SMFIP_HDR_LEADSPC negotiated, Postfix writes our value right after the colon:
        the space that separates them is ours to give."""
        return f" {value}" if self.leading_space else value

    def _can_suppress_dsn(self) -> bool:
        return bool(self.never_bounce and self.actions & mc.ACT_ADDRCPT_PAR and self.actions & mc.ACT_DELRCPT)

    def _edits(self, session: Session, envelope: Envelope, verdict: Verdict,
               recipients: list[tuple[str, tuple[str, ...]]]) -> list[mc.Response]:
        edits: list[mc.Response] = []
        if self.actions & mc.ACT_ADDHDRS:
            # No Received header of ours: Postfix adds its own. Results go on top.
            for name, value in reversed(self.gateway.result_headers(verdict.findings)):
                edits.append(mc.InsertHeader(0, name, self._header_value(value)))
        if isinstance(verdict, Quarantine) and self.actions & mc.ACT_QUARANTINE:
            edits.append(mc.QuarantineMessage(f"scattergate {envelope.message_id}"))
        if self.rewrite_sender is not None and session.trusted and self.actions & mc.ACT_CHGFROM:
            new_sender = self.rewrite_sender(session, envelope)
            if new_sender:
                # No ESMTP parameters: Postfix keeps those of the original MAIL FROM.
                edits.append(mc.ChangeSender(f"<{new_sender}>"))
        return edits

    def _end_transaction(self) -> None:
        if self.session is not None:
            self.session.envelope = None
        self.transaction_refusal = None
        self._reset_message()

    async def _session(self) -> Session:
        if self.session is None:
            # The MTA skipped Connect (e.g. negotiated away): an unknown client, untrusted.
            await self._connect("unknown", 0)
        assert self.session is not None
        return self.session


# The answer to a step that is answered with "continue". Shared, so never mutated: callers
# only read or encode responses.
_CONTINUED = [CONTINUE]
# handle_now: this command needs handle_later (it asks the Gateway).
LATER = object()


@functools.lru_cache(maxsize=64)
def _negotiation(version: int, actions: int, protocol: int, no_reply: bool) -> tuple[mc.OptNegReply, tuple[type, ...]]:
    """Our answer to the MTA's offer, and the commands it will then send without waiting for
    a reply. The same offer comes on every connection (one per SMTP session): computed once."""
    actions &= WANTED_ACTIONS
    wanted = WANTED_PROTOCOL & protocol
    silent: tuple[type, ...] = ()
    if no_reply:
        wanted |= sum(flag for flag in NO_REPLY if flag & protocol)
        silent = tuple(NO_REPLY[flag] for flag in NO_REPLY if flag & wanted)
    macros = WANTED_MACROS if actions & mc.ACT_SETSYMLIST else {}
    return mc.OptNegReply(actions, wanted, macros, version=min(version, mc.VERSION)), silent


def _local_submission(hostname: str, ip: str, port: int) -> bool:
    """Mail Postfix took from sendmail(1) (non_smtpd_milters), not from an SMTP client."""
    if port != 0 or hostname != LOCAL_SUBMISSION_HOST:
        return False
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# -- the socket loop ---------------------------------------------------------------------------

ConnectionFactory = Callable[[], MilterConnection]


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           connection: MilterConnection) -> None:
    sock = _tcp_socket(writer)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    quickack = sock is not None and hasattr(socket, "TCP_QUICKACK")
    decoder = mc.Decoder()
    try:
        while data := await reader.read(65536):
            out: list[bytes] = []
            closing = False
            for command in decoder.feed(data):
                # connection.handle(), without a coroutine for the commands that need none.
                responses = connection.handle_now(command)
                if responses is LATER:
                    responses = await connection.handle_later(command)
                if responses is None:
                    closing = True  # after sending what earlier commands of this read answered
                    break
                for response in responses:  # type: ignore[union-attr]
                    out.append(CONTINUE_PACKET if response is CONTINUE else mc.encode(response))
            if out:
                writer.write(b"".join(out))
                await writer.drain()
            elif quickack and not closing:
                # A read we answer nothing to (the MTA does not wait: headers, body, macros):
                # ACK it now rather than after the delayed-ACK timer. Not sticky, so re-armed
                # for each such read; a read we answer needs none, the answer carries the ACK
                # (a setsockopt and a bare ACK segment less, three times a message).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            if closing:
                return
    except mc.MilterProtocolError as exc:
        log.warning("milter: protocol error, closing: %s", exc)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        connection.close()
        if sock is not None:
            sock.detach()  # the fd is the transport's: it closes it
        writer.close()


def _tcp_socket(writer: asyncio.StreamWriter) -> socket.socket | None:
    """A socket object on the connection's fd for setsockopt, when it is TCP; the caller
    detaches it when done (the transport owns and closes the fd). uvloop's transport socket
    builds and detaches a new socket.socket for every setsockopt: at one QUICKACK per read,
    six per message."""
    transport_sock = writer.get_extra_info("socket")
    if transport_sock is None or transport_sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return socket.socket(transport_sock.family, transport_sock.type, transport_sock.proto,
                         fileno=transport_sock.fileno())


def handler(gateway: Gateway, **options: object) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The stream callback for asyncio.start_server / start_unix_server. All connections share
    one memory budget, and one view of who is ours (built once, not per connection)."""
    options.setdefault("memory", MemoryBudget(gateway.config.postfix.milter_memory_limit))
    options.setdefault("trust", PostfixTrust(gateway, gateway.config))

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, MilterConnection(gateway, **options))  # type: ignore[arg-type]

    return on_connection


def run(config: Config) -> int:
    """`scattergate milter`: serve until SIGTERM/SIGINT."""
    from scattergate.serve import run_service, start_stream_server

    for_postfix(config)

    async def start(gateway: Gateway) -> asyncio.AbstractServer:
        callback = handler(gateway, never_bounce=config.postfix.never_bounce,
                           no_reply=config.postfix.milter_skip_replies, rewrite_sender=batv_signer(gateway))
        return await start_stream_server(config.postfix.milter_listen, callback,
                                         socket_mode=config.postfix.socket_mode,
                                         socket_group=config.postfix.socket_group)

    return run_service(config, "milter", start)
