"""The one sender-proof rule, and every route asking it: milter (NOTIFY=NEVER) and spool (DSN).

MAIL FROM a.example.com signed d=b.example.com is a sibling under DMARC relaxed alignment: both
routes must treat it as proven. Before the rule was shared, the milter let Postfix bounce to it
while the spool route quarantined it (parent/child alignment only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import AsyncIterator

import dkim
import pytest

from scattergate.address import parse_path
from scattergate.bounce.policy import may_bounce
from scattergate.checks.dkim import DkimResult
from scattergate.checks.spf import SpfResult
from scattergate.decision.sender_proof import SenderProof, dkim_aligned, envelope_proof, sender_proof
from scattergate.frontends import milter_codec as mc
from scattergate.frontends.milter import MilterConnection, for_postfix, needs_never_bounce
from scattergate.model import Accept, Envelope, Session
from scattergate.pipeline import Gateway
from tests.support.dns_server import DnsTestServer
from tests.support.gateway import running_gateway
from tests.support.sink import free_port
from tests.unit.checks.test_dkim import KEY_A, KEY_A_PUB, key_record


def spf(result: str, identity: str = "mailfrom") -> SpfResult:
    return SpfResult(result, identity, "a.example.com", "x@a.example.com", "192.0.2.1")


@pytest.mark.parametrize(("mail_from", "d", "aligned"), [
    ("a.example.com", "b.example.com", True),  # siblings: the same organisation
    ("example.com", "mail.example.com", True),
    ("MAIL.Example.COM.", "example.com", True),
    ("a.example.com", "example.net", False),
    ("a.example.co.uk", "b.example.co.uk", True),  # the public suffix list knows co.uk
    ("example.co.uk", "other.co.uk", False),
    ("a.example.co.uk", "co.uk", False),  # a public suffix is no organisation
    ("notexample.com", "example.com", False),
    ("", "example.com", False),
])
def test_dkim_alignment_is_dmarc_relaxed(mail_from: str, d: str, aligned: bool) -> None:
    assert dkim_aligned(mail_from, d) is aligned


@pytest.mark.parametrize(("sender", "spf_result", "dkim_results", "proven"), [
    ("x@a.example.com", None, [DkimResult("pass", "b.example.com")], True),  # sibling signer
    ("x@a.example.com", None, [DkimResult("pass", "example.net")], False),  # unaligned signer
    ("x@a.example.com", None, [DkimResult("fail", "a.example.com")], False),  # bad signature
    ("x@a.example.com", spf("pass"), [], True),
    ("x@a.example.com", spf("softfail"), [], False),
    ("x@a.example.com", spf("pass", identity="helo"), [], False),  # HELO proves nothing of MAIL FROM
    ("", spf("pass"), [DkimResult("pass", "a.example.com")], False),  # the null sender
    ("postmaster", spf("pass"), [], False),
])
def test_sender_proof(sender: str, spf_result: SpfResult | None, dkim_results: list[DkimResult],
                      proven: bool) -> None:
    assert sender_proof(sender, spf_result, dkim_results).proven is proven


def test_the_safe_bounce_rule_uses_the_same_proof() -> None:
    assert may_bounce("x@a.example.com", content_verdict="clean", spf_result=None,
                      dkim_aligned_pass=SenderProof(None, True).dkim_aligned, notify=None).allowed
    refused = may_bounce("x@a.example.com", content_verdict="clean", spf_result="fail",
                         dkim_aligned_pass=False, notify=None)
    assert refused.reason == "sender-unverified (spf=fail, dkim=none)"


# -- both routes, through a real Gateway, a DKIM signature verified against loopback DNS ------

MESSAGE = (b"From: x@a.example.com\r\nTo: user@example.org\r\nSubject: sibling\r\n"
           b"Message-ID: <sib@a.example.com>\r\n\r\nHello.\r\n")


def signed(domain: str) -> bytes:
    return dkim.DKIM(MESSAGE, minkey=512).sign(b"sel", domain.encode(), KEY_A) + MESSAGE


@pytest.fixture
def dns() -> AsyncIterator[DnsTestServer]:
    zone = {f"sel._domainkey.{d}": [("TXT", key_record(KEY_A_PUB))] for d in ("b.example.com", "example.net")}
    with DnsTestServer(zone) as server:
        yield server


def _config(make_config, tmp_path: Path, dns: DnsTestServer, **sections):  # type: ignore[no-untyped-def]
    (tmp_path / "rcpts").write_text("user@example.org\n")
    config = make_config(receive={"domains": ["example.org"], "recipients_file": str(tmp_path / "rcpts")},
                         dns={"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": 5.0, "lifetime": 8.0},
                         **sections)
    config.auth.dkim = True
    return config


async def _milter_edits(gateway: Gateway, message: bytes) -> list[mc.Response]:
    conn = MilterConnection(gateway)
    head, _, body = message.partition(b"\r\n\r\n")
    commands: list[mc.Command] = [mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1, "192.0.2.7"),
                                  mc.Mail("<x@a.example.com>", ()), mc.Rcpt("<user@example.org>", ())]
    for field in re.split(r"\r\n(?![ \t])", head.decode()):
        name, _, value = field.partition(":")
        commands.append(mc.Header(name, value.replace("\r\n", "\n")))  # folded as Postfix sends it
    commands.append(mc.EndOfMessage(body))
    out: list[mc.Response] = []
    for command in commands:
        out += await conn.handle(command) or []
    conn.close()
    return out


@pytest.mark.parametrize(("signer", "proven"), [("b.example.com", True), ("example.net", False)])
async def test_milter_route_never_bounce_follows_the_rule(make_config, tmp_path: Path, dns: DnsTestServer,  # type: ignore[no-untyped-def]
                                                          signer: str, proven: bool) -> None:
    async with running_gateway(for_postfix(_config(make_config, tmp_path, dns))) as gateway:
        out = await _milter_edits(gateway, signed(signer))
    never_bounce = [r for r in out if isinstance(r, mc.AddRecipient) and "NOTIFY=NEVER" in r.options]
    assert out[-1] == mc.Continue()
    assert (never_bounce == []) is proven


@pytest.mark.parametrize(("signer", "proven"), [("b.example.com", True), ("example.net", False)])
async def test_spool_route_keeps_the_same_proof(make_config, tmp_path: Path, dns: DnsTestServer,  # type: ignore[no-untyped-def]
                                                signer: str, proven: bool) -> None:
    config = _config(make_config, tmp_path, dns, spool={"enabled": True, "retry_initial": 60.0},
                     delivery={"relay": f"127.0.0.1:{free_port()}", "verify_recipients": False})
    async with running_gateway(config) as gateway:
        session = Session("192.0.2.7")
        assert isinstance(await gateway.connect(session), Accept)
        envelope = gateway.mail(session, parse_path("<x@a.example.com>"), ())
        assert isinstance(await gateway.rcpt(session, envelope, parse_path("<user@example.org>")), Accept)
        verdict = await gateway.data(session, envelope, signed(signer))
        assert isinstance(verdict, Accept), verdict
        gateway.disconnect(session)
        assert gateway.spool is not None
        (entry,) = list(gateway.spool.entries())
    assert needs_never_bounce(session, envelope) is not proven  # the milter's view of this envelope
    decision = may_bounce(entry.sender, content_verdict=entry.content_verdict, spf_result=entry.spf_result,
                          dkim_aligned_pass=entry.dkim_aligned, notify=None)
    assert decision.allowed is proven
    assert envelope_proof(envelope).proven is proven


def test_never_bounce_spares_null_sender_and_trusted_clients() -> None:
    envelope = Envelope(parse_path("<x@a.example.com>"))
    assert needs_never_bounce(Session("192.0.2.1"), envelope)
    assert not needs_never_bounce(Session("192.0.2.1", trusted=True), envelope)
    assert not needs_never_bounce(Session("192.0.2.1"), Envelope(parse_path("<>", allow_null=True)))
