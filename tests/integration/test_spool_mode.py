"""Store-and-forward: durable before the 250, retries, restart, give-up, kill -9."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.support.polling import wait_for
from tests.support.sink import SmtpSink, free_port

MESSAGE = b"From: a@sender.example\r\nTo: user@example.org\r\nSubject: spooled\r\n\r\nHello.\r\n"


def spool_config(make_config, relay: str, **spool):  # type: ignore[no-untyped-def]
    settings = {"enabled": True, "retry_initial": 0.2, "retry_max": 0.5, **spool}
    return make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": relay, "verify_recipients": False, "relay_timeout": 5.0},
        spool=settings,
    )


def send(address, rcpt: str = "user@example.org", **kwargs) -> str:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        code, text = client.mail("a@sender.example", kwargs.get("mail_options", []))
        assert code == 250
        code, text = client.rcpt(rcpt, kwargs.get("rcpt_options", []))
        assert code == 250, text
        code, text = client.data(MESSAGE)
        assert code == 250, text
        return text.decode()


def test_spool_accepts_while_the_downstream_is_down_and_delivers_later(gateway, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    gw = gateway(spool_config(make_config, f"127.0.0.1:{port}"))
    reply = send(gw.address)
    assert "queued as" in reply
    spool = gw.gateway.spool
    assert spool is not None and len(spool) == 1  # on disk, fsynced, before the 250
    sink = SmtpSink(require_binary("smtp-sink"), tmp_path / "sink", [])
    sink.port = port
    sink.start()
    try:
        gw.gateway.scheduler.wake()
        assert wait_for(lambda: len(sink.messages()) == 1 and len(spool) == 0)
        assert b"Subject: spooled" in sink.messages()[0]
    finally:
        sink.stop()


def test_a_spooled_message_a_crash_damaged_is_set_aside_and_the_others_delivered(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    from scattergate.delivery.spool import Spool, SpooledRecipient, SpoolEntry

    sink = smtp_sink()
    config = spool_config(make_config, sink.address)
    spool = Spool(config.data_dir / "spool")  # left by the previous run of the gateway
    damaged, whole = (SpoolEntry("a@sender.example", [SpooledRecipient("user@example.org")], 1000.0)
                      for _ in range(2))
    for e in (damaged, whole):
        spool.put(e, MESSAGE.replace(b"spooled", e.id.encode()))
    path = spool.message_path(damaged.id)
    data = path.read_bytes()
    path.write_bytes(data[:-8] + b"\0" * 8)  # blocks a crash left unwritten: only the CRC tells
    gw = gateway(config)
    assert wait_for(lambda: len(sink.messages()) == 1 and len(gw.gateway.spool) == 0)
    assert whole.id.encode() in sink.messages()[0]
    assert (config.data_dir / "spool" / "corrupt" / f"{damaged.id}.msg").exists()


def test_a_delivery_is_logged_with_the_downstreams_reply(gateway, make_config, smtp_sink, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="scattergate.delivery.scheduler")
    sink = smtp_sink()
    gw = gateway(spool_config(make_config, sink.address))
    message_id = send(gw.address).rsplit(" ", 1)[1]
    assert wait_for(lambda: len(sink.messages()) == 1 and len(gw.gateway.spool) == 0)
    assert wait_for(lambda: any(f"message {message_id}: delivered to {sink.address} for 1 recipient(s): reply=\"250"
                                in r.getMessage() for r in caplog.records))


def test_a_restart_resumes_the_queue(gateway, make_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    config = spool_config(make_config, f"127.0.0.1:{port}")
    first = gateway(config)
    send(first.address)
    send(first.address)
    first.stop()
    sink = SmtpSink(require_binary("smtp-sink"), tmp_path / "sink", [])
    sink.port = port
    sink.start()
    try:
        second = gateway(config)
        assert wait_for(lambda: len(sink.messages()) == 2 and len(second.gateway.spool) == 0)
    finally:
        sink.stop()


def test_give_up_time_fails_the_message_without_bouncing_an_unproven_sender(gateway, make_config, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO")
    gw = gateway(spool_config(make_config, f"127.0.0.1:{free_port()}", give_up=0.5))
    send(gw.address)
    spool = gw.gateway.spool
    assert wait_for(lambda: len(spool) == 0)
    (item,) = gw.store.quarantine_list()
    assert item.sender == "a@sender.example" and item.reason.startswith("bounce suppressed: sender-unverified")
    assert any("bounce suppressed: sender-unverified" in r.getMessage() for r in caplog.records)


def test_downstream_permanent_refusal_is_quarantined_for_an_unproven_sender(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink("-f", "rcpt")
    gw = gateway(spool_config(make_config, sink.address))
    send(gw.address)
    assert wait_for(lambda: len(gw.gateway.spool) == 0)
    (item,) = gw.store.quarantine_list()
    assert item.recipients == ("user@example.org",)
    assert gw.gateway.quarantine.content(item).endswith(MESSAGE)
    assert sink.messages() == []  # no DSN went anywhere


def test_dsn_extension_is_advertised_and_parameters_pass_to_the_downstream(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    sink = smtp_sink()
    gw = gateway(make_config(receive={"domains": ["example.org"]},
                             delivery={"relay": sink.address, "verify_recipients": False}))
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("client.example")
        assert client.has_extn("dsn")
    send(gw.address, mail_options=["RET=HDRS", "ENVID=QQ314159"],
         rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;User@example.org"])
    (dump,) = sink.messages()
    head = dump.split(b"\n\n", 1)[0].decode()
    assert re.search(r"X-Mail-Args: <a@sender.example>.*RET=HDRS", head)
    assert "ENVID=QQ314159" in head
    assert re.search(r"X-Rcpt-Args: <user@example.org>.*NOTIFY=", head)
    assert "ORCPT=rfc822;User@example.org" in head


@pytest.mark.parametrize("param", ["NOTIFY=NEVER,SUCCESS", "NOTIFY=BOGUS", "ORCPT=nosemicolon"])
def test_malformed_dsn_parameters_are_refused(gateway, make_config, param: str) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(make_config(receive={"domains": ["example.org"], "recipients_file": ""}))
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("client.example")
        client.mail("a@sender.example")
        code, _ = client.docmd(f"RCPT TO:<postmaster@example.org> {param}")
        assert code == 555


def test_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Count every 250 while the gateway is killed mid-load; after a restart, every one of them
    must reach the downstream (or still be spooled)."""
    sink = SmtpSink(require_binary("smtp-sink"), tmp_path / "sink", [])
    sink.start()
    port = free_port()
    args = [sys.executable, "-m", "scattergate", "serve", "--listen", f"127.0.0.1:{port}",
            "--relay", sink.address, "--spool", "--domain", "example.org", "--no-verify-recipients",
            "--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # type: ignore[union-attr]
                return process
        raise AssertionError("gateway did not start")

    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        n = 0
        while not stop.is_set() and n < 400:  # bounded load
            n += 1
            tag = f"w{worker}-{n}"
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    smtp.sendmail("a@sender.example", ["user@example.org"],
                                  f"Subject: {tag}\r\nMessage-ID: <{tag}@test>\r\n\r\nbody\r\n".encode())
                with lock:
                    acknowledged.append(tag)
            except (OSError, smtplib.SMTPException):
                return  # the gateway died under us: whatever was not acknowledged is not owed

    process = start()
    workers = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    assert wait_for(lambda: len(acknowledged) >= 40, timeout=60)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    stop.set()
    for w in workers:
        w.join(30)
    count = len(acknowledged)
    assert count >= 40
    process = start()
    try:
        def delivered() -> set[str]:
            found = set()
            for dump in sink.messages():
                match = re.search(rb"Subject: (w\d+-\d+)", dump)
                if match:
                    found.add(match.group(1).decode())
            return found

        assert wait_for(lambda: set(acknowledged) <= delivered(), timeout=60), (
            f"{len(set(acknowledged) - delivered())} of {count} acknowledged messages lost"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        sink.stop()


def proven_config(make_config, relay: str, dns_port: int, **spool):  # type: ignore[no-untyped-def]
    config = spool_config(make_config, relay, **spool)
    config.auth.spf = True
    config.dns.nameservers = ["127.0.0.1"]
    config.dns.port = dns_port
    return config


def send_from(address, sender: str, rcpt_options=()) -> None:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail(sender)
        code, text = client.rcpt("user@example.org", list(rcpt_options))
        assert code == 250, text
        assert client.data(MESSAGE)[0] == 250


def dsns(sink: SmtpSink) -> list[bytes]:
    return [d for d in sink.messages() if b"X-Mail-Args: <>" in d]


def test_a_proven_sender_gets_its_dsn_by_the_dsn_route(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    from tests.support.dns_server import DnsTestServer

    refusing = smtp_sink("-f", "rcpt")
    smarthost = smtp_sink()
    with DnsTestServer({"pass.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}) as dns:
        gw = gateway(proven_config(make_config, refusing.address, dns.port, dsn_route=smarthost.address))
        send_from(gw.address, "someone@pass.example", ["NOTIFY=FAILURE", "ORCPT=rfc822;user@example.org"])
        assert wait_for(lambda: len(dsns(smarthost)) == 1 and len(gw.gateway.spool) == 0)
    (dsn,) = dsns(smarthost)
    assert b"X-Rcpt-Args: <someone@pass.example>" in dsn
    assert re.search(rb"multipart/report;\s+report-type=\"?delivery-status", dsn) and b"Action: failed" in dsn
    assert b"Original-Recipient: rfc822;user@example.org" in dsn
    assert gw.store.quarantine_list() == []


def test_notify_never_means_no_dsn_even_for_a_proven_sender(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    from tests.support.dns_server import DnsTestServer

    refusing = smtp_sink("-f", "rcpt")
    smarthost = smtp_sink()
    with DnsTestServer({"pass.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}) as dns:
        gw = gateway(proven_config(make_config, refusing.address, dns.port, dsn_route=smarthost.address))
        send_from(gw.address, "someone@pass.example", ["NOTIFY=NEVER"])
        assert wait_for(lambda: len(gw.gateway.spool) == 0)
    assert dsns(smarthost) == []
    (item,) = gw.store.quarantine_list()
    assert "notify-never" in item.reason


def test_notify_success_through_a_downstream_without_dsn_gets_a_relayed_notice(gateway, make_config, smtp_sink) -> None:  # type: ignore[no-untyped-def]
    from tests.support.dns_server import DnsTestServer

    sink = smtp_sink("-N")  # does not announce DSN
    with DnsTestServer({"pass.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")]}) as dns:
        gw = gateway(proven_config(make_config, sink.address, dns.port))
        send_from(gw.address, "someone@pass.example", ["NOTIFY=SUCCESS"])
        assert wait_for(lambda: len(dsns(sink)) == 1 and len(gw.gateway.spool) == 0)
    (notice,) = dsns(sink)
    assert b"Action: relayed" in notice and b"X-Rcpt-Args: <someone@pass.example>" in notice


def _hostile_downstream(listener, replies: dict[bytes, bytes]) -> None:
    """A one-connection SMTP server whose reply to the end of DATA carries a terminal escape
    and forged log fields (a downstream's text is not ours to trust in our log)."""
    connection, _ = listener.accept()
    with connection, connection.makefile("rb") as lines:
        connection.sendall(b"220 hostile.example ESMTP\r\n")
        in_data = False
        for line in lines:
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    connection.sendall(replies[b"."])
                continue
            verb = line[:4].upper()
            if verb == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            if verb == b"DATA":
                in_data = True
            connection.sendall(replies.get(verb, b"250 ok\r\n"))


def test_the_downstreams_reply_is_quoted_in_the_delivery_log_line(gateway, make_config, caplog) -> None:  # type: ignore[no-untyped-def]
    import logging
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    hostile = b"250 2.0.0 Ok \x1b[31m verdict=accept session=forged\r\n"
    server = threading.Thread(target=_hostile_downstream, args=(listener, {
        b"EHLO": b"250 hostile.example\r\n", b"DATA": b"354 go\r\n", b".": hostile}), daemon=True)
    server.start()
    try:
        with caplog.at_level(logging.INFO, logger="scattergate.delivery.scheduler"):
            gw = gateway(spool_config(make_config, "127.0.0.1:%d" % listener.getsockname()[1]))
            message_id = send(gw.address).rsplit(" ", 1)[1]
            assert wait_for(lambda: len(gw.gateway.spool) == 0)
            lines = [r.getMessage() for r in caplog.records if f"message {message_id}: delivered" in r.getMessage()]
            assert lines and "\x1b" not in lines[0]
            assert lines[0].endswith('reply="250 2.0.0 Ok \\x1b[31m verdict=accept session=forged"')
    finally:
        listener.close()
