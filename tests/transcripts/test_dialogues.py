"""SMTP dialogues against the real gateway on 127.0.0.1, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dialogue import Dialogue

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture
def gw(gateway, make_config, tmp_path: Path):  # type: ignore[no-untyped-def]
    rcpts = tmp_path / "recipients"
    rcpts.write_text("user@example.org\nother@example.org\npostmaster\n")
    config = make_config(
        receive={"recipients_file": str(rcpts), "trusted_networks": ["192.0.2.0/24"]},
        server={"max_recipients": 3, "max_message_size": 10_000, "max_connections_per_client": 3},
    )
    return gateway(config)


def maildir_files(gw, address: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    local, domain = address.split("@")
    folder = gw.config.maildir / domain / local / "new"
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.exists() else []


def start(gw, sender: str = "<a@sender.example>") -> Dialogue:  # type: ignore[no-untyped-def]
    d = Dialogue(gw.address)
    assert d.banner[0] == 220 and "mx.test.example" in d.banner[1]
    assert d.command("EHLO client.example")[0] == 250
    assert d.command(f"MAIL FROM:{sender}")[0] == 250
    return d


def test_accepted_message_is_on_disk_before_the_250(gw) -> None:  # type: ignore[no-untyped-def]
    with start(gw) as d:
        assert d.command("RCPT TO:<user@example.org>")[0] == 250
        assert d.command("DATA")[0] == 354
        d.send(MESSAGE + b".\r\n")
        code, text = d.reply()
        assert code == 250 and text.startswith("2.0.0")
        # The 250 came back, so the message must already be in new/ (fsync happened first).
        (stored,) = maildir_files(gw, "user@example.org")
        assert stored.endswith(MESSAGE)
        assert stored.startswith(b"Received: from client.example ([127.0.0.1])")
        assert b"by mx.test.example (scattergate) with ESMTP id" in stored


def test_unknown_recipient_refused_at_rcpt(gw) -> None:  # type: ignore[no-untyped-def]
    with start(gw) as d:
        code, text = d.command("RCPT TO:<nobody@example.org>")
        assert (code, text[:5]) == (550, "5.1.1")
        assert d.command("DATA")[0] == 503  # nothing was accepted


def test_dot_stuffing_and_multiple_recipients(gw) -> None:  # type: ignore[no-untyped-def]
    with start(gw) as d:
        assert d.command("RCPT TO:<user@example.org>")[0] == 250
        assert d.command("RCPT TO:<Other@Example.ORG>")[0] == 250
        assert d.command("RCPT TO:<nobody@example.org>")[0] == 550
        d.command("DATA")
        d.send(b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n")
        assert d.reply()[0] == 250
    for address in ("user@example.org", "other@example.org"):
        (stored,) = maildir_files(gw, address)
        assert stored.endswith(b"\r\n.leading dot\r\n")


@pytest.mark.parametrize(
    "rcpt, code",
    [
        ("<victim@other.example>", 554),
        ("<victim%other.example@example.org>", 554),
        ("<other.example!victim@example.org>", 554),
        ('<"victim@other.example"@example.org>', 554),
        ("<@example.org:victim@other.example>", 554),
        ("<user@[127.0.0.1]>", 554),
    ],
)
@pytest.mark.parametrize("sender", ["<a@sender.example>", "<>", "<user@example.org>", "<x@mx.test.example>"])
def test_not_an_open_relay(gw, rcpt: str, code: int, sender: str) -> None:  # type: ignore[no-untyped-def]
    with start(gw, sender) as d:
        reply = d.command(f"RCPT TO:{rcpt}")
        assert reply[0] == code and reply[1].startswith("5.7.1"), reply


def test_helo_with_our_own_name_grants_nothing(gw) -> None:  # type: ignore[no-untyped-def]
    with Dialogue(gw.address) as d:
        d.command("HELO mx.test.example")
        d.command("MAIL FROM:<postmaster@mx.test.example>")
        assert d.command("RCPT TO:<victim@other.example>")[0] == 554


def test_loopback_is_not_trusted_by_default(gw) -> None:  # type: ignore[no-untyped-def]
    # The trusted network in this config is 192.0.2.0/24: we connect from 127.0.0.1.
    assert not gw.gateway.is_trusted("127.0.0.1")
    assert gw.gateway.is_trusted("192.0.2.55") and gw.gateway.is_trusted("::ffff:192.0.2.55")


def test_trusted_client_without_outbound_route_is_refused(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(make_config(receive={"domains": ["example.org"], "trusted_networks": ["127.0.0.0/8"]}))
    with start(gw) as d:
        code, text = d.command("RCPT TO:<someone@other.example>")
        assert code == 554 and "no outbound route" in text


@pytest.mark.parametrize(
    "line, replies",
    [
        (b"MAIL FROM:<a@sender.example>\n", [500]),
        (b"MAIL FROM:<a@sender.example>\r\r\n", [500]),
        (b"NOOP\rMAIL FROM:<a@sender.example>\r\n", [500]),
        # A bare LF ends a line for the reader, so this is two lines: only the first is bad.
        (b"MAIL FROM:<a@sender.example>\nNOOP\r\n", [500, 250]),
    ],
)
def test_bare_cr_or_lf_in_a_command_line_is_refused(gw, line: bytes, replies: list[int]) -> None:  # type: ignore[no-untyped-def]
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        d.send(line)
        got = [d.reply() for _ in replies]
        assert [code for code, _ in got] == replies
        assert "bare CR or LF" in got[0][1]
        # Nothing of the refused line took effect: RCPT still needs MAIL.
        assert d.command("RCPT TO:<user@example.org>")[0] == 503


SMUGGLING = [
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\n.\r",
]


@pytest.mark.parametrize("separator", SMUGGLING, ids=repr)
def test_smuggled_second_message_is_refused_with_the_first(gw, separator: bytes) -> None:  # type: ignore[no-untyped-def]
    smuggled = (
        b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<other@example.org>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n"
    )
    with start(gw) as d:
        d.command("RCPT TO:<user@example.org>")
        d.command("DATA")
        d.send(b"Subject: first\r\n\r\nfirst" + separator + smuggled + b".\r\n")
        code, text = d.reply()
        assert code == 550 and text.startswith("5.5.2"), (code, text)
        # The session goes on; the client is not left mid-message.
        assert d.command("NOOP")[0] == 250
    assert maildir_files(gw, "user@example.org") == []
    assert maildir_files(gw, "other@example.org") == []


def test_size_limits(gw) -> None:  # type: ignore[no-untyped-def]
    with Dialogue(gw.address) as d:
        code, text = d.command("EHLO client.example")
        assert "SIZE 10000" in text
        assert d.command("MAIL FROM:<a@sender.example> SIZE=20000")[0] == 552
        assert d.command("MAIL FROM:<a@sender.example> SIZE=2000")[0] == 250
        d.command("RCPT TO:<user@example.org>")
        d.command("DATA")
        d.send(b"Subject: big\r\n\r\n" + (b"x" * 900 + b"\r\n") * 20 + b".\r\n")
        assert d.reply()[0] == 552
    assert maildir_files(gw, "user@example.org") == []


def test_too_many_recipients_gets_452(gw) -> None:  # type: ignore[no-untyped-def]
    with start(gw) as d:
        for address in ("user@example.org", "other@example.org", "postmaster@example.org"):
            assert d.command(f"RCPT TO:<{address}>")[0] == 250
        code, text = d.command("RCPT TO:<user+2@example.org>")
        assert (code, text[:5]) == (452, "4.5.3")


def test_overlong_lines(gw) -> None:  # type: ignore[no-untyped-def]
    with start(gw) as d:
        assert d.command("RCPT TO:<" + "a" * 600 + "@example.org>")[:2] == (500, "5.5.2 Line too long")
        d.command("RCPT TO:<user@example.org>")
        d.command("DATA")
        d.send(b"Subject: long\r\n\r\n" + b"y" * 1200 + b"\r\n.\r\n")
        # RFC 5322 §2.1.1: refused as content (tests/integration/test_malformed_input.py).
        assert d.reply()[:2] == (550, "5.6.0 Message refused: line longer than 998 characters (RFC 5322 2.1.1)")
    assert maildir_files(gw, "user@example.org") == []


@pytest.mark.parametrize(
    "commands, code",
    [
        (["RCPT TO:<user@example.org>"], 503),
        (["DATA"], 503),
        (["MAIL FROM:<a@sender.example>", "MAIL FROM:<b@sender.example>"], 503),
        (["MAIL FROM:<a@sender.example>", "DATA"], 503),
        (["MAIL FROM:<a@sender.example>", "RSET", "RCPT TO:<user@example.org>"], 503),
        (["MAIL FROM:a@b@c"], 553),
        (["MAIL FROM:<a@sender.example>", "RCPT TO:<>"], 553),
        (["MAIL FROM:<a@sender.example>", "RCPT TO:<user@example.org> NOTIFY=BOGUS"], 555),
    ],
)
def test_bad_sequences_and_syntax(gw, commands: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        replies = [d.command(c) for c in commands]
        assert replies[-1][0] == code, replies


def test_per_client_connection_limit(gw) -> None:  # type: ignore[no-untyped-def]
    held = [Dialogue(gw.address) for _ in range(3)]
    try:
        extra = Dialogue.__new__(Dialogue)
        import socket

        extra.sock = socket.create_connection(gw.address, timeout=10)
        extra.file = extra.sock.makefile("rb")
        code, text = extra.reply()
        assert code == 421 and text.startswith("4.7.0")
        assert extra.closed()
        extra.close()
    finally:
        for d in held:
            d.close()
    # Once the others are gone, the client gets in again (the server counts a close as soon as
    # it reads the EOF, so poll a bounded number of times rather than sleep).
    banners = []
    for _ in range(200):
        with Dialogue(gw.address) as d:
            banners.append(d.banner[0])
            if d.banner[0] == 220:
                break
    assert banners[-1] == 220


def test_decisions_are_logged_and_counted(gw, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="scattergate.decision")
    with start(gw) as d:
        d.command("RCPT TO:<nobody@example.org>")
        d.command("RCPT TO:<user@example.org>")
        d.command("DATA")
        d.send(MESSAGE + b".\r\n")
        d.reply()
    gw.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "scattergate.decision"]
    assert any(
        "client=127.0.0.1" in l and "from=<a@sender.example>" in l and "to=<nobody@example.org>" in l
        and "verdict=reject" in l and "recipient.unknown" in l for l in lines
    ), lines
    assert any("phase=data verdict=accept" in l and "to=<user@example.org>" in l for l in lines), lines
    counters = gw.store.counters()
    assert counters["decisions.rcpt.reject"] == 1
    assert counters["decisions.data.accept"] == 1
    assert counters["findings.recipient.unknown"] == 1
    recent = gw.store.recent_decisions(5)
    assert recent[0].verdict == "accept" and recent[1].findings == ("recipient.unknown[nobody@example.org]",)


def test_headers_only_we_may_set_are_removed_from_incoming_mail(gateway, make_config) -> None:  # type: ignore[no-untyped-def]
    from scattergate.config import ClamavConfig
    from tests.support.sink import free_port

    # A scanner that cannot be reached, set to accept: the message is delivered with our
    # X-Scan-Skipped; the sender's own X-Spam-Flag: NO must not survive next to it.
    gw = gateway(make_config(
        receive={"domains": ["example.org"]},
        scan={"clamav": ClamavConfig(enabled=True, address=f"127.0.0.1:{free_port()}", on_failure="accept")},
    ))
    with start(gw) as d:
        d.command("RCPT TO:<postmaster@example.org>")
        d.command("DATA")
        d.send(b"X-Spam-Flag: NO\r\nX-Scattergate-Backscatter: solicited\r\nSubject: forged\r\n\r\nbody\r\n.\r\n")
        assert d.reply()[0] == 250
    (stored,) = maildir_files(gw, "postmaster@example.org")
    assert b"X-Spam-Flag: NO" not in stored and b"X-Scattergate-Backscatter" not in stored
    assert b"X-Scan-Skipped: clamav" in stored and b"Subject: forged" in stored


def test_every_smtp_command_is_still_dispatched(gw) -> None:  # type: ignore[no-untyped-def]
    # GatewaySMTP lists only its smtp_/auth_ methods to aiosmtpd (a speed-up): HELP shows the
    # commands aiosmtpd found that way, which must be all of them.
    with Dialogue(gw.address) as d:
        d.command("EHLO client.example")
        code, text = d.command("HELP")
        assert code == 250
        for command in ("DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "VRFY"):
            assert command in text.split(), (command, text)
