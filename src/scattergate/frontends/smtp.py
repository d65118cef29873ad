"""The SMTP front end: our own SMTP server (smtp_protocol + smtp_server) with the Gateway behind it.

`GatewaySession` is the server's handler for one connection: it turns each command the state
machine has checked into a call on the pipeline (connect, mail, rcpt, data, authenticate) and
each verdict into the reply. Every MAIL/RCPT/DATA answer comes from the decision layer; the
front end never delivers (Gateway.data does, inside the dialogue).
"""

from __future__ import annotations

import functools
import weakref

from scattergate.frontends import smtp_protocol as sp
from scattergate.frontends.smtp_server import SmtpConnection, Timing
from scattergate.model import Accept, Finding, Phase, Quarantine, RcptDsn, Reject, Reply, Session, Tempfail
from scattergate.pipeline import MAIL_OK, Gateway

AUTH_LOCKOUT_REPLY = "421 4.7.0 Too many failed authentication attempts, closing connection"
AUTH_LOCKED_OUT_REPLY = "454 4.7.0 Too many failed authentication attempts from your address, try again later"
# RFC 5322 §2.1.1: at most 998 characters per line. Refused as content after the final dot,
# rather than passed on or folded (folding breaks DKIM).
LONG_DATA_LINE_REPLY = "550 5.6.0 Message refused: line longer than 998 characters (RFC 5322 2.1.1)"
SIZE_REPLY = sp.MESSAGE_TOO_BIG
NEED_MAIL_REPLY = sp.NEED_MAIL

_REFUSED_CONTENT = {
    sp.DataOutcome.TOO_LONG: (LONG_DATA_LINE_REPLY, Finding("message", "line_too_long", "a line longer than 998 characters")),
    sp.DataOutcome.TOO_MUCH: (SIZE_REPLY, Finding("message", "too_large", "more than the maximum message size")),
}


class GatewaySession:
    """One SMTP connection's handler: the Gateway's phases behind the protocol."""

    __slots__ = ("gateway", "session", "session_id", "_counted", "_auth_failures")

    def __init__(self, gateway: Gateway, peer: object) -> None:
        self.gateway = gateway
        ip, port = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("unknown", 0)
        self.session = Session(client_ip=ip, client_port=port)
        self.session_id = self.session.id
        self._counted = False
        self._auth_failures = 0

    async def connected(self) -> str | None:
        verdict = await self.gateway.connect(self.session)
        self._counted = True
        return None if isinstance(verdict, Accept) else str(verdict.reply)

    def disconnected(self) -> None:
        if self._counted:
            self._counted = False
            self.gateway.disconnect(self.session)

    def hello(self, event: sp.Hello) -> None:
        session = self.session
        session.helo, session.esmtp, session.envelope = event.name, event.extended, None

    def reset(self) -> None:
        self.session.envelope = None

    def tls_started(self) -> None:
        """RFC 3207 §4.2: forget what the client said in clear text; it must EHLO again."""
        session = self.session
        session.tls = True
        session.helo, session.esmtp, session.envelope = "", False, None

    async def mail(self, event: sp.MailFrom) -> tuple[str, bool]:
        self.session.envelope = self.gateway.mail(self.session, event.sender, event.options,
                                                  ret=event.ret, envid=event.envid)
        return str(MAIL_OK), True

    async def rcpt(self, event: sp.RcptTo) -> tuple[str, bool]:
        envelope = self.session.envelope
        if envelope is None:  # only if the pipeline dropped it; the protocol checks sequencing
            return NEED_MAIL_REPLY, False
        verdict = await self.gateway.rcpt(self.session, envelope, event.recipient, RcptDsn(event.notify, event.orcpt))
        return str(verdict.reply), isinstance(verdict, (Accept, Quarantine))

    async def message(self, content: bytes) -> tuple[str, bool]:
        session = self.session
        envelope, session.envelope = session.envelope, None
        assert envelope is not None
        verdict = await self.gateway.data(session, envelope, content)
        return str(verdict.reply), isinstance(verdict, (Accept, Quarantine))

    def message_refused(self, outcome: sp.DataOutcome) -> str:
        """A message refused as it was read (our checks never saw it), recorded like any decision."""
        reply, finding = _REFUSED_CONTENT[outcome]
        session = self.session
        envelope, session.envelope = session.envelope, None
        self.gateway.recorder.record(
            session, Phase.DATA, str(envelope.sender) if envelope else "",
            [str(r) for r in envelope.recipients] if envelope else (),
            Reject(Reply.parse(reply), (finding,)),
        )
        return reply

    async def authenticate(self, event: sp.Authenticate) -> tuple[str, bool, bool]:
        gateway, session = self.gateway, self.session
        if await gateway.auth_locked_out(session):
            # RFC 4954 §6: temporary failure. No password is checked, so guessing teaches nothing.
            return AUTH_LOCKED_OUT_REPLY, False, True
        try:
            user = event.user.decode("utf-8")
        except UnicodeDecodeError:
            user = ""  # no such user: refused like any unknown one (same work, same log line)
        if await gateway.authenticate(session, user, event.password):
            return sp.AUTH_OK, True, False
        self._auth_failures += 1
        if self._auth_failures >= gateway.config.smtp_auth.max_failures:
            # A password guesser gets a few tries per connection, each costing it a reconnect.
            return f"{sp.AUTH_FAILED}\r\n{AUTH_LOCKOUT_REPLY}", False, True
        return sp.AUTH_FAILED, False, False

    def hang_up(self, timed_out: bool, in_data: bool) -> str:
        """Say 421 and close: recorded like a decision (log line, counters, dashboard)."""
        gateway, session = self.gateway, self.session
        if timed_out:
            what = "DATA not complete" if in_data else "command line not complete"
            reply = Reply(421, "4.4.2", f"{gateway.hostname} Error: timeout exceeded")
            finding = Finding("session", "timeout", f"{what} in time")
        else:
            limit = gateway.config.server.max_commands
            reply = Reply(421, "4.7.0", f"{gateway.hostname} Error: too many commands")
            finding = Finding("session", "too_many_commands", f"more than {limit} without a message")
        envelope = session.envelope
        phase = Phase.DATA if in_data else (
            Phase.CONNECT if envelope is None else Phase.RCPT if envelope.recipients else Phase.MAIL)
        gateway.recorder.record(
            session, phase, str(envelope.sender) if envelope else "",
            [str(r) for r in envelope.recipients] if envelope else (), Tempfail(reply, (finding,)),
        )
        return str(reply)


_SETUP: "weakref.WeakKeyDictionary[Gateway, tuple[sp.Settings, Timing]]" = weakref.WeakKeyDictionary()


def _setup(gateway: Gateway) -> tuple[sp.Settings, Timing]:
    """The protocol settings and deadlines a gateway's connections share (built once per gateway)."""
    found = _SETUP.get(gateway)
    if found is None:
        server = gateway.config.server
        settings = sp.Settings(
            hostname=gateway.hostname,
            max_message_size=server.max_message_size,
            smtputf8=server.smtputf8,
            tls_available=gateway.tls_context is not None,
            tls_required=gateway.config.tls.required,
            auth_available=gateway.credentials is not None,
            max_commands=server.max_commands,
        )
        timing = Timing(
            command_timeout=server.command_timeout,
            data_timeout=server.data_timeout,
            data_min_rate=float(server.data_min_rate),
            busy_allowance=server.rcpt_deadline,
            end_of_data_allowance=server.data_deadline + server.command_timeout,
            max_session_time=server.max_session_time,
        )
        found = _SETUP[gateway] = (settings, timing)
    return found


def gateway_connection(gateway: Gateway) -> SmtpConnection:
    """The protocol factory for `loop.create_server`: one SMTP connection served by `gateway`."""
    settings, timing = _setup(gateway)
    return SmtpConnection(settings, timing, functools.partial(GatewaySession, gateway), gateway.tls_context)
