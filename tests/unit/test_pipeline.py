"""The Gateway's phases as a unit (pipeline.py), on parts assembled from config with chosen
checks and a recording delivery: which checks run when, what the decider sees, what delivery
is handed, and that delivery outcomes come back as decision/outcomes.py words them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

import pytest

from scattergate.address import Address, parse_path
from scattergate.assembly import assemble
from scattergate.checks import CheckContext, RemoteCheck
from scattergate.config import Config
from scattergate.delivery.outcome import DeliveryOutcome
from scattergate.model import Accept, Envelope, Finding, Phase, Quarantine, Reject, Session, Tempfail, Verdict
from scattergate.pipeline import Gateway, _trace_name
from scattergate.state.sqlite import SqliteStore

CONTENT = b"From: a@sender.example\r\nSubject: hi\r\nX-Scattergate-Verdict: forged\r\n\r\nHello.\r\n"


@dataclass
class RecordingDelivery:
    """Stands where delivery/dispatch.py would: records what it is handed, reports `outcome`."""

    outcome: DeliveryOutcome = DeliveryOutcome("spool", "done", "Q1")
    handed: list[tuple[Address, bytes, Verdict, float]] = field(default_factory=list)

    async def deliver(self, session: Session, envelope: Envelope, sender: Address, message: bytes,
                      verdict: Verdict, budget: float) -> DeliveryOutcome:
        self.handed.append((sender, message, verdict, budget))
        return self.outcome


@pytest.fixture
async def build(make_config: Callable[..., Config], tmp_path: Path) -> AsyncIterator[Callable[..., Gateway]]:
    stores: list[SqliteStore] = []
    gateways: list[Gateway] = []

    async def noop() -> None: ...

    def make(**sections: dict) -> Gateway:  # type: ignore[type-arg]
        (tmp_path / "rcpts").write_text("user@example.org\n")
        config = make_config(receive={"domains": ["example.org"], "recipients_file": str(tmp_path / "rcpts"),
                                      **sections.pop("receive", {})}, **sections)
        store = SqliteStore(tmp_path / f"state{len(stores)}.sqlite3")
        stores.append(store)
        parts = assemble(config, store)
        parts.delivery = RecordingDelivery()  # type: ignore[assignment]
        gateway = Gateway(config, store, parts)
        gateways.append(gateway)
        return gateway

    yield make
    for gateway in gateways:
        await gateway.recorder.stop()
    for store in stores:
        store.close()


async def transaction(gateway: Gateway, *, ip: str = "192.0.2.7", sender: str = "<a@sender.example>",
                      recipients: tuple[str, ...] = ("<user@example.org>",)) -> tuple[Session, Envelope, list[Verdict]]:
    session = Session(ip)
    assert isinstance(await gateway.connect(session), Accept)
    envelope = gateway.mail(session, parse_path(sender, allow_null=True), ())
    verdicts = [await gateway.rcpt(session, envelope, parse_path(r)) for r in recipients]
    return session, envelope, verdicts


def delivery(gateway: Gateway) -> RecordingDelivery:
    return gateway.delivery  # type: ignore[return-value]


async def test_local_checks_refuse_before_any_remote_check_runs(build: Callable[..., Gateway]) -> None:
    gateway = build()
    asked: list[str] = []

    async def remote(ctx: CheckContext) -> list[Finding]:
        asked.append(str(ctx.recipient))
        return []

    gateway.checks[Phase.RCPT].remote.append(RemoteCheck("probe", remote, 1.0))
    _, envelope, (relay, unknown, known) = await transaction(
        gateway, recipients=("<x@elsewhere.example>", "<nobody@example.org>", "<user@example.org>"))
    assert isinstance(relay, Reject) and relay.findings[-1].key == "relay.denied"
    assert isinstance(unknown, Reject) and unknown.findings[-1].key == "recipient.unknown"
    assert isinstance(known, Accept)
    assert asked == ["user@example.org"]  # a refused recipient costs no remote check
    assert [str(r) for r in envelope.recipients] == ["user@example.org"]


async def test_a_remote_check_out_of_budget_is_a_tempfail(build: Callable[..., Gateway]) -> None:
    import asyncio

    gateway = build()

    async def hangs(ctx: CheckContext) -> list[Finding]:
        await asyncio.Event().wait()
        return []

    gateway.checks[Phase.RCPT].remote.append(RemoteCheck("slow", hangs, 0.05))
    _, _, (verdict,) = await transaction(gateway)
    assert isinstance(verdict, Tempfail) and verdict.findings[-1].key == "slow.timeout"


async def test_accepted_mail_reaches_delivery_with_our_headers_and_without_forged_fields(build: Callable[..., Gateway]) -> None:
    gateway = build()
    session, envelope, _ = await transaction(gateway)
    verdict = await gateway.data(session, envelope, CONTENT)
    assert isinstance(verdict, Accept) and str(verdict.reply) == "250 2.0.0 Ok: queued as Q1"
    ((sender, message, handed, budget),) = delivery(gateway).handed
    assert str(sender) == "a@sender.example" and isinstance(handed, Accept)
    assert message.startswith(b"Received: from unknown ([192.0.2.7])") and message.endswith(b"\r\n\r\nHello.\r\n")
    assert b"X-Scattergate-Verdict" not in message  # a field only we may set, from outside: removed
    assert 0 < budget <= gateway.config.server.data_deadline


async def test_a_refusal_at_data_never_reaches_delivery(build: Callable[..., Gateway]) -> None:
    gateway = build()
    session, envelope, _ = await transaction(gateway)
    verdict = await gateway.data(session, envelope, b"Subject: smuggled\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n")
    assert isinstance(verdict, Reject)
    assert delivery(gateway).handed == []


async def test_a_quarantine_verdict_is_handed_to_delivery_as_such(build: Callable[..., Gateway]) -> None:
    gateway = build(policy={"actions": {"suspect.hold": "quarantine"}})
    gateway.checks[Phase.RCPT].local.append(lambda ctx: [Finding("suspect", "hold", "a test check")])
    session, envelope, (rcpt,) = await transaction(gateway)
    assert isinstance(rcpt, Quarantine)
    delivery(gateway).outcome = DeliveryOutcome("quarantine", "done", "H1")
    verdict = await gateway.data(session, envelope, CONTENT)
    assert isinstance(verdict, Quarantine) and str(verdict.reply) == "250 2.0.0 Ok: held as H1"
    assert isinstance(delivery(gateway).handed[0][2], Quarantine)


async def test_delivery_trouble_is_a_tempfail_and_is_recorded(build: Callable[..., Gateway]) -> None:
    gateway = build()
    delivery(gateway).outcome = DeliveryOutcome("spool", "no_storage")
    session, envelope, _ = await transaction(gateway)
    verdict = await gateway.data(session, envelope, CONTENT)
    assert isinstance(verdict, Tempfail) and (verdict.reply.code, verdict.reply.status) == (452, "4.3.1")


async def test_our_users_mail_is_marked_on_the_way_out(build: Callable[..., Gateway]) -> None:
    # As behind Postfix: our users' mail to other domains has a route (here: the recording delivery).
    gateway = build(receive={"trusted_networks": ["192.0.2.0/24"]}, policy={"actions": {"relay.no_route": "accept"}})
    session, envelope, (verdict,) = await transaction(gateway, sender="<alice@example.org>",
                                                      recipients=("<friend@remote.example>",))
    assert session.trusted and isinstance(verdict, Accept)
    await gateway.data(session, envelope, b"Message-ID: <out-1@example.org>\r\nSubject: hi\r\n\r\nHi.\r\n")
    ((sender, message, _, _),) = delivery(gateway).handed
    assert str(sender).startswith("prvs=") and str(sender).endswith("=alice@example.org")  # BATV-signed
    assert message.startswith(b"X-Scattergate-Token: ")  # the proof its bounces will quote
    assert gateway.registry is not None and await gateway.registry.sent("<out-1@example.org>")


async def test_connection_limits_and_their_release(build: Callable[..., Gateway]) -> None:
    gateway = build(server={"max_connections_per_client": 1})
    first, second = Session("192.0.2.7"), Session("192.0.2.7")
    assert isinstance(await gateway.connect(first), Accept)
    refused = await gateway.connect(second)
    assert isinstance(refused, Tempfail) and refused.findings[0].key == "connection.too_many"
    gateway.disconnect(second)
    gateway.disconnect(first)
    assert gateway.active_sessions == 0
    assert isinstance(await gateway.connect(Session("192.0.2.7")), Accept)


async def test_sender_findings_wait_for_rcpt_and_go_into_the_data_decision(build: Callable[..., Gateway]) -> None:
    gateway = build()
    session, envelope, _ = await transaction(gateway, recipients=())
    envelope.sender_findings.append(Finding("sender", "odd", "held until RCPT", score=0.5))
    verdict = await gateway.rcpt(session, envelope, parse_path("<user@example.org>"))
    assert isinstance(verdict, Accept) and Finding("sender", "odd", "held until RCPT", score=0.5) in verdict.findings
    data = await gateway.decide_data(session, envelope, CONTENT)
    assert Finding("sender", "odd", "held until RCPT", score=0.5) in data.findings  # one log line explains all


@pytest.mark.parametrize("helo, shown", [
    ("mx.example.net", "mx.example.net"), ("", "unknown"), ("()\\", "unknown"),
    ("a(b)c\\d", "abcd"), ("evil\x1b[31m\r\n", "evil[31m"), ("h\u00e9llo", "h\u00e9llo"), ("x" * 150, "x" * 100),
])
def test_received_header_shows_the_helo_name_without_comment_delimiters_or_controls(helo: str, shown: str) -> None:
    assert _trace_name(helo) == shown


def test_trust_by_client_address_is_the_same_asked_again_and_past_the_remembered_count(
        build: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch) -> None:
    from scattergate import pipeline

    monkeypatch.setattr(pipeline, "_TRUSTED_CACHE_SIZE", 4)
    gateway = build(receive={"trusted_networks": ["192.0.2.0/24", "2001:db8::/32"]})
    asked = ["192.0.2.9", "198.51.100.1", "::ffff:192.0.2.9", "2001:db8::1", "not an address", "192.0.2.9"]
    expected = [True, False, True, True, False, True]
    for _ in range(3):  # first answers, remembered answers, answers after the memory was cleared
        assert [gateway.is_trusted(ip) for ip in asked] == expected
