"""The policy service against a real Gateway (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from scattergate.checks import CheckContext, RemoteCheck
from scattergate.config import Config
from scattergate.frontends import policy_codec as pc
from scattergate.frontends.milter import for_postfix
from scattergate.frontends.policy import PolicyService
from scattergate.model import Finding, Phase
from scattergate.pipeline import Gateway
from scattergate.state.sqlite import SqliteStore


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    config = Config()
    config.server.hostname = "mx.test.example"
    config.state.data_dir = str(tmp_path)
    config.logging.file = ""
    config.receive.domains = ["example.org"]
    config.receive.trusted_networks = ["10.0.0.0/8"]
    config.auth.spf = config.auth.dkim = False
    for_postfix(config)
    store = SqliteStore(tmp_path / "state.sqlite3")
    gw = Gateway(config, store)
    await gw.start()
    yield gw
    await gw.stop()
    store.close()


def _request(**attrs: str) -> dict[str, str]:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.7",
            "helo_name": "client.example.net", "sender": "a@example.net", "recipient": "postmaster@example.org"}
    return base | attrs


async def test_answers(gateway: Gateway) -> None:
    service = PolicyService(gateway)
    assert await service.answer(_request()) == pc.Dunno()
    unknown = await service.answer(_request(recipient="nobody@example.org"))
    assert isinstance(unknown, pc.RejectAction) and unknown.reply.code == 550
    relay = await service.answer(_request(recipient="x@elsewhere.example"))
    assert isinstance(relay, pc.RejectAction) and relay.reply.status == "5.7.1"
    # Postfix routes outbound mail: trusted (network or SASL) clients may send anywhere.
    assert await service.answer(_request(recipient="x@elsewhere.example", client_address="10.1.2.3")) == pc.Dunno()
    assert await service.answer(_request(recipient="x@elsewhere.example", sasl_username="alice")) == pc.Dunno()
    # Stages without checks, other requests, and unparseable addresses: no opinion.
    assert await service.answer(_request(protocol_state="DATA")) == pc.Dunno()
    assert await service.answer({"request": "something_else"}) == pc.Dunno()
    assert await service.answer(_request(recipient="bad address")) == pc.Dunno()


@pytest.mark.parametrize("action, expected", [("dunno", pc.Dunno), ("defer_if_permit", pc.DeferIfPermit)])
async def test_budget(gateway: Gateway, action: str, expected: type) -> None:
    async def stall(ctx: CheckContext) -> list[Finding]:
        await asyncio.Event().wait()  # never answers
        return []

    gateway.checks[Phase.RCPT].remote.append(RemoteCheck("stall", stall, 60))
    service = PolicyService(gateway, budget=0.05, timeout_action=action)
    assert isinstance(await service.answer(_request()), expected)


async def test_broken_check_defers(gateway: Gateway) -> None:
    def broken(ctx: CheckContext) -> list[Finding]:
        raise RuntimeError("boom")

    gateway.checks[Phase.RCPT].local.append(broken)
    answer = await PolicyService(gateway).answer(_request())
    assert isinstance(answer, pc.DeferIfPermit)
