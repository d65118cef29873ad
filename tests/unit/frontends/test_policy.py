"""The policy service against a real Gateway (no sockets)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from scattergate.checks import CheckContext, RemoteCheck
from scattergate.frontends import policy_codec as pc
from scattergate.frontends.milter import batv_signer
from scattergate.frontends.policy import PolicyService
from scattergate.frontends.postfix_side import for_policy_service
from scattergate.address import parse_path
from scattergate.model import Finding, Phase
from scattergate.pipeline import Gateway
from tests.support.gateway import running_gateway


@pytest.fixture
async def gateway(make_config) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    config = make_config(receive={"domains": ["example.org"], "trusted_networks": ["10.0.0.0/8"]})
    async with running_gateway(for_policy_service(config), behind_postfix=True) as gw:
        yield gw


def _request(**attrs: str) -> dict[str, str]:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.7",
            "helo_name": "client.example.net", "sender": "a@example.net", "recipient": "postmaster@example.org"}
    return base | attrs


async def test_answers(gateway: Gateway) -> None:
    service = PolicyService(gateway)
    assert await service.answer(_request()) == pc.Dunno()
    # Behind Postfix, relay control and recipient tables are Postfix's (applied before it asks).
    assert await service.answer(_request(recipient="nobody@example.org")) == pc.Dunno()
    assert await service.answer(_request(recipient="x@elsewhere.example")) == pc.Dunno()
    assert await service.answer(_request(recipient="x@elsewhere.example", client_address="10.1.2.3")) == pc.Dunno()
    assert await service.answer(_request(recipient="x@elsewhere.example", sasl_username="alice")) == pc.Dunno()
    # Stages without checks, other requests, and unparseable addresses: no opinion.
    assert await service.answer(_request(protocol_state="DATA")) == pc.Dunno()
    assert await service.answer({"request": "something_else"}) == pc.Dunno()
    assert await service.answer(_request(recipient="bad address")) == pc.Dunno()


async def test_recipient_table_when_configured_and_postfix_words_the_prefix(make_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "recipients").write_text("user@example.org\n")
    config = make_config(receive={"domains": ["example.org"], "recipients_file": str(tmp_path / "recipients")})
    async with running_gateway(for_policy_service(config), behind_postfix=True) as gw:
        service = PolicyService(gw)
        unknown = await service.answer(_request(recipient="nobody@example.org"))
        assert isinstance(unknown, pc.RejectAction) and unknown.reply.code == 550
        # Postfix writes "Recipient address rejected:" before our text itself: not twice.
        assert pc.encode(unknown) == b"action=550 5.1.1 User unknown\n\n"
        assert await service.answer(_request(recipient="user@example.org")) == pc.Dunno()


async def test_policy_only_install_does_not_refuse_untagged_bounces(gateway: Gateway) -> None:
    # It never signs, so a bounce to a bare address says nothing about backscatter.
    assert await PolicyService(gateway).answer(_request(sender="", recipient="postmaster@example.org")) == pc.Dunno()


async def test_a_milter_signed_bounce_passes_the_policy_service(make_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One site secret for every service: the milter's tag verifies in the policy service."""
    shared = str(tmp_path / "site.key")
    milter_config = make_config(receive={"domains": ["example.org"]}, backscatter={"secret_file": shared},
                                state={"data_dir": str(tmp_path / "milter")})
    policy_config = make_config(receive={"domains": ["example.org"]}, backscatter={"secret_file": shared},
                                state={"data_dir": str(tmp_path / "policy")})
    other_config = make_config(receive={"domains": ["example.org"]}, state={"data_dir": str(tmp_path / "other")})
    async with running_gateway(milter_config) as milter_gw:
        sign = batv_signer(milter_gw)
        assert sign is not None
        from scattergate.model import Envelope, Session
        tagged = sign(Session(client_ip="10.0.0.1"), Envelope(sender=parse_path("<alice@example.org>")))
        assert tagged and tagged.startswith("prvs=")
    bounce = _request(sender="", recipient=tagged)
    async with running_gateway(for_policy_service(policy_config), behind_postfix=True) as gw:
        assert await PolicyService(gw).answer(bounce) == pc.Dunno()
    async with running_gateway(for_policy_service(other_config), behind_postfix=True) as gw:  # its own secret: not ours
        refused = await PolicyService(gw).answer(bounce)
        assert isinstance(refused, pc.RejectAction), refused


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


# -- rate limits ------------------------------------------------------------------------------

@pytest.fixture
async def limited(make_config) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    config = make_config(
        receive={"domains": ["example.org"]},
        rate_limits={"connections_per_client": 1, "messages_per_client": 2, "recipients_per_sender_domain": 5},
    )
    async with running_gateway(for_policy_service(config)) as gw:
        yield gw


async def test_rate_limits_count_each_message_once_by_its_instance(limited: Gateway) -> None:
    service = PolicyService(limited)
    # Two messages with three recipients each: two messages, not six.
    for instance in ("a1.1", "a1.2"):
        for rcpt in ("postmaster@example.org", "abuse@example.org", "postmaster@example.org"):
            got = await service.answer(_request(instance=instance, recipient=rcpt, sender=f"x@{instance}.example"))
            assert got == pc.Dunno()
    third = await service.answer(_request(instance="a1.3", sender="x@third.example"))
    assert isinstance(third, pc.DeferIfPermit) and third.reply.status == "4.7.1"
    assert pc.encode(third).startswith(b"action=DEFER_IF_PERMIT 4.7.1 Too much mail")
    # The rest of that message is deferred too, without counting it again.
    again = await service.answer(_request(instance="a1.3", sender="x@third.example", recipient="abuse@example.org"))
    assert isinstance(again, pc.DeferIfPermit)
    assert limited.rate is not None and limited.rate.store.hit(["m:192.0.2.7"], 60) == [4]


async def test_recipient_rate_per_sender_domain(limited: Gateway) -> None:
    service = PolicyService(limited)
    answers = [await service.answer(_request(instance="b.1", client_address=f"192.0.2.{n}",
                                             sender="news@bulk.example")) for n in range(6)]
    assert answers[:5] == [pc.Dunno()] * 5
    assert isinstance(answers[5], pc.DeferIfPermit) and "recipients" in answers[5].reply.text


async def test_connection_rate_when_postfix_asks_at_connect(limited: Gateway) -> None:
    service = PolicyService(limited)
    connect = {"request": "smtpd_access_policy", "protocol_state": "CONNECT", "client_address": "192.0.2.9"}
    assert await service.answer(connect) == pc.Dunno()
    refused = await service.answer(connect)
    assert isinstance(refused, pc.DeferIfPermit) and refused.reply.status == "4.7.0"


# -- DNSBL (safe mode) ----------------------------------------------------------------------------

@pytest.fixture
async def dnsbl_gateway(make_config) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    from tests.support.dns_server import DnsTestServer

    zone = {"2.0.0.127.bl.test.": [("A", "127.0.0.2")]}
    with DnsTestServer(zone) as dns:
        config = make_config(
            receive={"domains": ["example.org"]},
            backscatter={"batv_mode": "off"},  # else BATV refuses the null sender first
            dnsbl={"zones": ["bl.test"]},
            dns={"nameservers": ["127.0.0.1"], "port": dns.port},
        )
        async with running_gateway(for_policy_service(config)) as gw:
            yield gw


async def test_dnsbl_refuses_a_listed_clients_bounces_only(dnsbl_gateway: Gateway) -> None:
    service = PolicyService(dnsbl_gateway)
    bounce = await service.answer(_request(client_address="127.0.0.2", sender=""))
    assert isinstance(bounce, pc.RejectAction) and bounce.reply.code == 554
    assert pc.encode(bounce) == b"action=554 5.7.1 Service unavailable; client [127.0.0.2] listed at bl.test (127.0.0.2)\n\n"
    assert await service.answer(_request(client_address="127.0.0.2", sender="a@example.net")) == pc.Dunno()
    assert await service.answer(_request(client_address="127.0.0.1", sender="")) == pc.Dunno()
