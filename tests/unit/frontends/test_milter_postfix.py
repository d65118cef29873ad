"""The milter behind Postfix: Postfix's relay and recipient decisions stand, our users are
recognised from what Postfix tells us, NOTIFY=NEVER is visible, message size and memory are
bounded (issues 14 and 15.2)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import AsyncIterator

import pytest

from scattergate.frontends import milter_codec as mc
from scattergate.frontends.milter import MemoryBudget, MilterConnection, batv_signer
from scattergate.frontends.postfix_side import for_postfix
from scattergate.pipeline import Gateway
from scattergate.rewrite import srs
from scattergate.rewrite.keys import SrsSecrets
from tests.support.gateway import running_gateway
from tests.unit.frontends.test_milter import _run

ALL = (mc.OptNeg(6, 0x1FF, 0x1FFFFF),)
BOUNCE = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
          b"--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed\r\n"
          b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
          b"Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
          b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <orig@example.org>\r\n"
          b"From: carol@example.net\r\n\r\n--b--\r\n")


@pytest.fixture
async def gateway(make_config, tmp_path: Path) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    (tmp_path / "srs.secrets").write_text("srs-test-secret\n")
    (tmp_path / "srs.secrets").chmod(0o600)
    config = make_config(receive={"domains": ["example.org"]}, auth={"spf": False, "dkim": False},
                         postfix={"srs_domain": "fwd.example.org", "srs_secrets_file": str(tmp_path / "srs.secrets")},
                         server={"max_message_size": 4096, "max_header_size": 1024})
    async with running_gateway(for_postfix(config), behind_postfix=True) as gw:
        yield gw


def _message(headers: dict[str, str], body: bytes = b"hello\r\n") -> list[mc.Command]:
    return [*(mc.Header(k, f" {v}") for k, v in headers.items()), mc.Body(body), mc.EndOfMessage()]


async def test_outbound_mail_postfix_relays_is_ours_without_trusted_networks(gateway: Gateway) -> None:
    # Postfix passed a recipient outside our domains: its smtpd_relay_restrictions let the
    # client relay (mynetworks here). We neither refuse it nor treat it as a stranger.
    conn = MilterConnection(gateway, rewrite_sender=batv_signer(gateway))
    out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<alice@example.org>", ()),
                     mc.Rcpt("<bob@elsewhere.example>", ()),
                     *_message({"Message-ID": "<out1@example.org>", "Subject": "hi"}))
    assert out[-1] == mc.Continue()
    changes = [r for r in out if isinstance(r, mc.ChangeSender)]
    assert len(changes) == 1 and changes[0].sender.startswith("<prvs="), out
    assert not any(isinstance(r, mc.AddRecipient) for r in out)  # our user hears of failures
    conn.close()


async def test_recipients_are_postfixs_job(gateway: Gateway) -> None:
    conn = MilterConnection(gateway)
    out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<a@example.net>", ()),
                     mc.Rcpt("<alice@example.org>", ()), mc.Rcpt("<bob@example.org>", ()))
    assert out[1:] == [mc.Continue(), mc.Continue()]
    assert conn.session is not None and not conn.session.trusted
    conn.close()


async def test_a_bounce_to_a_valid_srs_address_passes(gateway: Gateway) -> None:
    today = int(time.time() // 86400)
    address = srs.forward("carol@example.net", "fwd.example.org", SrsSecrets.of(["srs-test-secret"]), today).address
    assert address is not None
    conn = MilterConnection(gateway)
    out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<>", ()),
                     mc.Rcpt(f"<{address}>", ()), *_message({"Subject": "Undelivered"}, BOUNCE))
    assert out[1:][-1] == mc.Continue(), out
    assert conn.session is not None and not conn.session.trusted  # a bounce to us, not a relay
    # The same bounce to a bare address of ours, with no evidence, is backscatter.
    out = await _run(conn, mc.Mail("<>", ()), mc.Rcpt("<alice@example.org>", ()))
    assert isinstance(out[-1], mc.RejectReply), out
    conn.close()


async def test_notify_never_is_logged_counted_and_in_the_decision(gateway: Gateway, caplog) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    gateway.recorder.observers.append(type("Obs", (), {
        "decided": lambda self, record, verdict: seen.extend(record.findings),
        "counted": lambda self, name, amount: seen.append(f"count:{name}")})())
    conn = MilterConnection(gateway)
    with caplog.at_level(logging.INFO):
        out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<x@forged.example>", ()),
                         mc.Rcpt("<alice@example.org>", ()), *_message({"Subject": "hi"}))
    assert mc.AddRecipient("<alice@example.org>", ("NOTIFY=NEVER",)) in out
    assert "count:dsn.suppressed" in seen
    assert any(f.startswith("dsn.suppressed") for f in seen)
    assert conn.session is not None
    line = next(r.getMessage() for r in caplog.records if "DSNs suppressed" in r.getMessage())
    assert line.startswith(f"session={conn.session.id} ") and "sender=x@forged.example" in line
    conn.close()


async def test_added_headers_have_a_space_after_the_colon(gateway: Gateway) -> None:
    conn = MilterConnection(gateway, rewrite_sender=batv_signer(gateway))
    out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<alice@example.org>", ()),
                     mc.Rcpt("<bob@elsewhere.example>", ()), *_message({"Message-ID": "<h1@example.org>"}))
    headers = [r for r in out if isinstance(r, mc.InsertHeader)]
    assert headers and all(h.value.startswith(" ") and not h.value.startswith("  ") for h in headers), headers
    conn.close()


async def test_sendmail_and_originating_service_are_ours(gateway: Gateway) -> None:
    local = MilterConnection(gateway)
    await _run(local, *ALL, mc.Connect("localhost", "4", 0, "127.0.0.1"))
    assert local.session is not None and local.session.trusted
    local.close()
    submission = MilterConnection(gateway)
    await _run(submission, *ALL, mc.Macros("C", {"{daemon_name}": "ORIGINATING"}),
               mc.Connect("c", "4", 4000, "192.0.2.10"))
    assert submission.session is not None and submission.session.trusted
    submission.close()
    stranger = MilterConnection(gateway)  # port 0 is only ever Postfix's own pickup
    await _run(stranger, *ALL, mc.Connect("localhost", "4", 4000, "127.0.0.1"))
    assert stranger.session is not None and not stranger.session.trusted
    stranger.close()


async def test_a_message_over_the_size_limit_is_refused_and_not_held(gateway: Gateway) -> None:
    memory = MemoryBudget(1 << 20)
    conn = MilterConnection(gateway, memory=memory)
    out = await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<a@example.net>", ()),
                     mc.Rcpt("<alice@example.org>", ()), mc.Header("Subject", " big"),
                     *(mc.Body(b"x" * 1000) for _ in range(100)))
    assert memory.used <= 4096 and conn.held <= 4096
    end = await _run(conn, mc.EndOfMessage())
    assert isinstance(end[-1], mc.RejectReply) and (end[-1].reply.code, end[-1].reply.status) == (552, "5.3.4")
    assert memory.used == 0
    # Headers have their own limit.
    out = await _run(conn, mc.Mail("<a@example.net>", ()), mc.Rcpt("<alice@example.org>", ()),
                     *(mc.Header("X-Filler", " " + "y" * 100) for _ in range(20)), mc.EndOfMessage())
    assert isinstance(out[-1], mc.RejectReply) and out[-1].reply.code == 552, out
    conn.close()


async def test_all_connections_together_are_bounded(gateway: Gateway) -> None:
    memory = MemoryBudget(3000)
    first, second = MilterConnection(gateway, memory=memory), MilterConnection(gateway, memory=memory)
    for conn in (first, second):
        await _run(conn, *ALL, mc.Connect("c", "4", 4000, "192.0.2.10"), mc.Mail("<a@example.net>", ()),
                   mc.Rcpt("<alice@example.org>", ()), mc.Body(b"x" * 2000))
    assert memory.used <= 3000
    out = await _run(second, mc.EndOfMessage())
    assert isinstance(out[-1], mc.TempfailReply) and out[-1].reply.code == 451, out
    out = await _run(first, mc.EndOfMessage())
    assert out[-1] == mc.Continue()
    assert memory.used == 0
    first.close()
    second.close()


def test_the_domains_postfix_receives_for_are_required() -> None:
    """Without them every recipient would look outbound and every client like one of ours."""
    from scattergate.config import Config, ConfigError

    with pytest.raises(ConfigError, match="receive.domains"):
        for_postfix(Config())
