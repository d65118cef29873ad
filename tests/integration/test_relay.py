"""Before-queue relay into a real downstream (Postfix's smtp-sink) on loopback."""

from __future__ import annotations

import smtplib
import time


from tests.support.dialogue import Dialogue

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: relay\r\n\r\nHello downstream.\r\n"


def relay_config(make_config, sink_address: str, **delivery):  # type: ignore[no-untyped-def]
    settings = {"relay": sink_address, "relay_timeout": 2.0, "verify_timeout": 2.0, **delivery}
    return make_config(receive={"domains": ["example.org"]}, delivery=settings)


def send(gw, rcpts=("user@example.org",), data: bytes = MESSAGE) -> tuple[list[tuple[int, str]], tuple[int, str]]:  # type: ignore[no-untyped-def]
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        d.command("MAIL FROM:<a@sender.example>")
        rcpt_replies = [d.command(f"RCPT TO:<{r}>") for r in rcpts]
        if not any(code == 250 for code, _ in rcpt_replies):
            return rcpt_replies, (0, "")
        d.command("DATA")
        d.send(data + b".\r\n")
        return rcpt_replies, d.reply()


def test_relayed_message_reaches_the_downstream_before_the_250(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    gw = gateway(relay_config(make_config, sink.address))
    rcpts, (code, text) = send(gw)
    assert code == 250 and "relayed" in text, (rcpts, code, text)
    (received,) = sink.messages()
    assert MESSAGE.replace(b"\r\n", b"\n") in received  # smtp-sink stores LF line ends
    assert b"by mx.test.example (scattergate)" in received


def test_connections_to_the_downstream_are_reused(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    gw = gateway(relay_config(make_config, sink.address, verify_recipients=False))
    client = smtplib.SMTP(*gw.address)
    for i in range(5):
        client.sendmail("a@sender.example", ["user@example.org"], MESSAGE)
    client.quit()
    assert len(sink.messages()) == 5
    pool = gw.gateway.relay.pool
    assert len(pool._idle) == 1  # five sequential messages, one downstream connection


def test_downstream_5xx_at_end_of_data_is_passed_through(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-f", ".")
    gw = gateway(relay_config(make_config, sink.address))
    _, (code, _) = send(gw)
    assert code // 100 == 5


def test_downstream_4xx_at_end_of_data_is_a_tempfail(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-r", ".")
    gw = gateway(relay_config(make_config, sink.address))
    _, (code, _) = send(gw)
    assert code // 100 == 4


def test_downstream_down_gives_451_at_end_of_data(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    from tests.support.sink import free_port

    gw = gateway(relay_config(make_config, f"127.0.0.1:{free_port()}", verify_recipients=False))
    _, (code, text) = send(gw)
    assert (code, text[:5]) == (451, "4.4.1")


def test_downstream_down_tempfails_recipient_verification(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    from tests.support.sink import free_port

    gw = gateway(relay_config(make_config, f"127.0.0.1:{free_port()}"))
    (rcpt,), _ = send(gw)
    assert rcpt[0] // 100 == 4


def test_slow_downstream_gives_451_within_the_deadline(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-W", ".:30")  # answers end-of-data after 30 s; our budget is 2 s
    gw = gateway(relay_config(make_config, sink.address, verify_recipients=False))
    started = time.monotonic()
    _, (code, text) = send(gw)
    elapsed = time.monotonic() - started
    assert (code, text[:5]) == (451, "4.4.2")
    assert elapsed < 20  # a deadline, not a benchmark: far below the sink's 30 s


def test_unknown_recipient_refused_at_rcpt_by_verification(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-f", "rcpt")
    gw = gateway(relay_config(make_config, sink.address))
    (rcpt,), _ = send(gw)
    assert rcpt[0] == 550 and rcpt[1].startswith("5.1.1")
    assert sink.messages() == []


def test_downstream_4xx_at_rcpt_becomes_our_4xx(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-r", "rcpt")
    gw = gateway(relay_config(make_config, sink.address))
    (rcpt,), _ = send(gw)
    assert rcpt[0] // 100 == 4


def test_slow_verification_tempfails_within_budget(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-W", "rcpt:30")
    gw = gateway(relay_config(make_config, sink.address, verify_timeout=1.0))
    (rcpt,), _ = send(gw)
    assert rcpt[0] == 451 and "verify" in rcpt[1]


def test_relay_check_still_applies_with_a_downstream(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    gw = gateway(relay_config(make_config, sink.address))
    (rcpt,), _ = send(gw, rcpts=("victim@other.example",))
    assert rcpt[0] == 554


def test_trusted_client_relays_outbound(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    config = make_config(
        receive={"domains": ["example.org"], "trusted_networks": ["127.0.0.0/8"]},
        delivery={"relay": sink.address},
    )
    gw = gateway(config)
    (rcpt,), (code, _) = send(gw, rcpts=("friend@other.example",))
    assert rcpt[0] == 250 and code == 250
    assert len(sink.messages()) == 1
