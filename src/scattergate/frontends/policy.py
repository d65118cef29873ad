"""The Postfix policy service front end: envelope-stage checks through the same Gateway.

Postfix asks once per SMTP stage (`check_policy_service` in smtpd_*_restrictions); we answer
from the Gateway's verdict for that stage. At RCPT the whole RCPT phase of the Gateway runs
(relay control, recipient table, and any check added there later: SPF, BATV on null-sender
RCPTs, rate limits), with the client, HELO and sender Postfix reports. At CONNECT (asked
only with `smtpd_delay_reject = no`) the connection rate limit is counted. Other stages answer
DUNNO until a check needs them: add a handler to `PolicyService.stages`.

Postfix asks once per RCPT, with a fresh request each time; the `instance` attribute (the same
for every request of one message) lets the message rate count each message once, and keeps a
message refused for its rate refused for its other recipients too.

Never block Postfix past the budget: a request not decided in `budget` seconds gets the
configured answer (DUNNO: let Postfix's own restrictions decide; or DEFER_IF_PERMIT).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Awaitable, Callable

from scattergate.address import AddressError, parse_path
from scattergate.config import Config
from scattergate.frontends import policy_codec as pc
from scattergate.frontends.postfix_side import PostfixTrust, for_policy_service
from scattergate.logfmt import fields
from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Session, Verdict
from scattergate.pipeline import Gateway

log = logging.getLogger(__name__)

TIMEOUT_REPLY = Reply(451, "4.4.3", "Policy check timed out, try again later")
ERROR_REPLY = Reply(451, "4.3.0", "Policy check failed, try again later")

StageHandler = Callable[[dict[str, str]], Awaitable[pc.Action]]

# Messages (Postfix `instance`s) whose rate counting is remembered across their RCPT requests;
# Postfix asks about one message's recipients within seconds, so a few thousand suffice.
MAX_INSTANCES = 4096


# Postfix puts this before the text of a refusal in smtpd_recipient_restrictions itself.
POSTFIX_PREFIX = "Recipient address rejected: "


def action_for(verdict: Verdict) -> pc.Action:
    if isinstance(verdict, (Accept, Quarantine)):
        return pc.Dunno()  # never "OK": Postfix's own later restrictions must still apply
    reply = verdict.reply
    if reply.text.startswith(POSTFIX_PREFIX):
        reply = Reply(reply.code, reply.status, reply.text[len(POSTFIX_PREFIX):])
    if isinstance(verdict, Reject):
        return pc.RejectAction(reply)
    return pc.DeferIfPermit(reply)


class PolicyService:
    def __init__(self, gateway: Gateway, *, budget: float = 5.0, timeout_action: str = "dunno") -> None:
        if timeout_action not in ("dunno", "defer_if_permit"):
            raise ValueError(f"timeout action must be dunno or defer_if_permit, not {timeout_action!r}")
        self.gateway = gateway
        self.trust = PostfixTrust(gateway, gateway.config)
        self.budget = budget
        self.timeout_action = timeout_action
        self.stages: dict[str, StageHandler] = {"RCPT": self._rcpt, "CONNECT": self._connect}
        # instance -> the message findings held for the rest of that message (rate limits).
        self._messages: OrderedDict[str, tuple[Finding, ...]] = OrderedDict()

    async def answer(self, request: dict[str, str]) -> pc.Action:
        if request.get("request") != "smtpd_access_policy":
            return pc.Dunno()
        handle = self.stages.get(request.get("protocol_state", "").upper())
        if handle is None:
            return pc.Dunno()
        try:
            async with asyncio.timeout(self.budget):
                return await handle(request)
        except TimeoutError:
            log.warning("policy: no decision within %.3g s: %s", self.budget,
                        fields(sender=request.get("sender"), recipient=request.get("recipient"),
                               action=self.timeout_action))
            if self.timeout_action == "defer_if_permit":
                return pc.DeferIfPermit(TIMEOUT_REPLY)
            return pc.Dunno()
        except Exception:
            log.exception("policy: check failed")
            return pc.DeferIfPermit(ERROR_REPLY)

    def session_for(self, request: dict[str, str]) -> Session:
        port = request.get("client_port", "")
        session = Session(client_ip=request.get("client_address") or "unknown",
                          client_port=int(port) if port.isdigit() else 0)
        session.helo = request.get("helo_name", "")
        session.tls = bool(request.get("encryption_protocol"))
        # Connection limits are Postfix's job (anvil); trust as the gateway would, plus SASL.
        session.trusted = self.gateway.is_trusted(session.client_ip) or bool(request.get("sasl_username"))
        return session

    async def _rcpt(self, request: dict[str, str]) -> pc.Action:
        try:
            sender = parse_path(f"<{request.get('sender', '')}>", allow_null=True)
            recipient = parse_path(f"<{request.get('recipient', '')}>")
        except AddressError as exc:
            # Postfix checked the syntax already; our stricter parser is no reason to block.
            log.info("policy: cannot parse the addresses (%s): %s", exc,
                     fields(sender=request.get("sender"), recipient=request.get("recipient")))
            return pc.Dunno()
        session = self.session_for(request)
        envelope = self.gateway.mail(session, sender, ())
        instance = request.get("instance", "")
        held = self._messages.get(instance) if instance else None
        if held is not None:  # a later RCPT of a message already counted
            envelope.rate_counted = True
            envelope.sender_findings.extend(held)
        self.trust.note_relay(session, recipient)
        verdict = await self.gateway.rcpt(session, envelope, recipient)
        if instance and envelope.rate_counted:
            self._messages[instance] = tuple(envelope.sender_findings)
            self._messages.move_to_end(instance)
            while len(self._messages) > MAX_INSTANCES:
                self._messages.popitem(last=False)
        return action_for(verdict)

    async def _connect(self, request: dict[str, str]) -> pc.Action:
        session = self.session_for(request)
        return action_for(self.gateway.decide_connect(session, await self.gateway.connection_rate(session)))


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           service: PolicyService) -> None:
    """Postfix keeps the connection open for many requests, one at a time."""
    decoder = pc.Decoder()
    try:
        while data := await reader.read(65536):
            for request in decoder.feed(data):
                writer.write(pc.encode(await service.answer(request)))
            await writer.drain()
    except pc.PolicyProtocolError as exc:
        log.warning("policy: protocol error, closing: %s", exc)
    except ConnectionError:
        pass
    finally:
        writer.close()


def handler(service: PolicyService) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, service)

    return on_connection


def run(config: Config) -> int:
    """`scattergate policy`: serve until SIGTERM/SIGINT."""
    from scattergate.serve import run_service, start_stream_server

    for_policy_service(config)

    async def start(gateway: Gateway) -> asyncio.AbstractServer:
        service = PolicyService(gateway, budget=config.postfix.policy_budget,
                                timeout_action=config.postfix.policy_timeout_action)
        return await start_stream_server(config.postfix.policy_listen, handler(service),
                                         socket_mode=config.postfix.socket_mode,
                                         socket_group=config.postfix.socket_group)

    return run_service(config, "policy", start)
