"""docs/postfix.md's complete set-up, built from the page itself on a real Postfix (issue 14).

The blocks marked `<!-- doc-test: NAME -->` in docs/postfix.md are read here and used as they
are: the scattergate configuration file, the commands that start the services, and the main.cf
lines. Only these are replaced, so doc and test cannot drift:
  /etc/scattergate/, /etc/postfix/, /var/lib/scattergate  -> this test's temp directories
  127.0.0.1:8895 / :10044 / :8025, DNS "port = 53"        -> free loopback ports
Around the page's lines the test supplies only its lab: a private Postfix instance (queue,
loopback listener; tests/support/postfix.py), smtp-sink as both the mailstore and "the
internet" (relayhost), a second smtp-sink that refuses DATA (a mailbox that fails after
acceptance), a loopback DNS server, the contents of the two table files the page
describes, and XCLIENT so that a loopback client can stand for an outside one
(`smtpd_authorized_xclient_hosts`): 127.0.0.1 itself is in the page's mynetworks.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from email.message import Message
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.postfix_audit import parse_postconf
from tests.conftest import require_binary
from tests.support.dns_server import DnsTestServer
from tests.support.postfix import PrivatePostfix
from tests.support.sink import SmtpSink, free_port
from tests.system.postfix_fixtures import sink_dump_with, wait_for, world_dir

pytestmark = pytest.mark.system

DOC = Path(__file__).resolve().parents[2] / "docs" / "postfix.md"
OUTSIDE = "203.0.113.5"  # an internet client (XCLIENT), allowed by spf-pass.test's SPF record
SPF_DOMAIN = "spf-pass.test"
USERS = ("alice@example.org", "bob@example.org", "gone@example.org")


def doc_blocks(text: str) -> dict[str, str]:
    """The fenced blocks of the page marked `<!-- doc-test: NAME -->`, by name."""
    found = re.findall(r"<!-- doc-test: (\S+) -->\n```[^\n]*\n(.*?)\n```", text, re.S)
    return dict(found)


class World:
    def __init__(self, root: Path, sink: SmtpSink, postfix: PrivatePostfix, data_dir: Path, http_port: int) -> None:
        self.root, self.sink, self.postfix = root, sink, postfix
        self.data_dir, self.http_port = data_dir, http_port

    def client(self, outside: bool = True) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=60)
        client.ehlo("client.example.net")
        if outside:
            code, text = client.docmd("XCLIENT", f"ADDR={OUTSIDE} NAME=[UNAVAILABLE]")
            assert code == 220, text
            client.ehlo("mail.example.net")
        return client

    def delivered(self, token: str) -> tuple[dict[str, list[str]], Message]:
        return wait_for(lambda: sink_dump_with(self.sink.directory, token), timeout=60, what=f"delivery of {token}")

    def queue_empty(self) -> bool:
        listing = subprocess.run(["postqueue", "-c", str(self.postfix.config_dir), "-p"],
                                 capture_output=True, text=True, timeout=30)
        return "Mail queue is empty" in listing.stdout

    def milter_log(self) -> str:
        path = self.data_dir / "scattergate.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a readiness poll
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_binary("postfix")
    postmap = require_binary("postmap")
    sink_binary = require_binary("smtp-sink")
    blocks = doc_blocks(DOC.read_text())
    assert set(blocks) >= {"scattergate.toml", "commands", "main.cf"}, sorted(blocks)
    root = world_dir("sg-documented-")
    dns = DnsTestServer({SPF_DOMAIN: [("TXT", f"v=spf1 ip4:{OUTSIDE} -all")]}).start()
    sink = SmtpSink(sink_binary, root / "sink", [])
    sink.start()
    refusing = SmtpSink(sink_binary, root / "refusing", ["-f", "data"])  # a mailbox that fails after acceptance
    refusing.start()
    milter_port, socketmap_port, http_port = free_port(), free_port(), free_port()
    postfix = PrivatePostfix(root / "postfix", port=free_port(), settings={})
    sg_etc, data_dir = root / "etc-scattergate", root / "data"
    sg_etc.mkdir()
    replacements = {
        "/etc/scattergate/": f"{sg_etc}/", "/etc/postfix/": f"{postfix.config_dir}/",
        "/var/lib/scattergate": str(data_dir),
        "127.0.0.1:8895": f"127.0.0.1:{milter_port}", "127.0.0.1:10044": f"127.0.0.1:{socketmap_port}",
        "127.0.0.1:8025": f"127.0.0.1:{http_port}", "port = 53": f"port = {dns.port}",
    }

    def local(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    (sg_etc / "scattergate.toml").write_text(local(blocks["scattergate.toml"]))
    (sg_etc / "srs.secrets").write_text("documented-srs-secret\n")
    (sg_etc / "srs.secrets").chmod(0o600)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for line in blocks["commands"].splitlines():
            argv = shlex.split(local(line))
            assert argv[0] == "scattergate", line
            process = subprocess.Popen([sys.executable, "-m", "scattergate", *argv[1:]],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            processes.append(process)
            _wait_listening(milter_port if argv[1] == "milter" else socketmap_port, process)

        settings = parse_postconf(local(blocks["main.cf"]))  # main.cf syntax, as postconf prints it
        settings.update({  # the lab around the page (see the module docstring)
            "default_transport": "smtp",
            "relayhost": f"[127.0.0.1]:{sink.port}",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
        })
        postfix.settings = settings
        postfix.write_config()
        (postfix.config_dir / "relay_recipients").write_text("".join(f"{user} OK\n" for user in USERS))
        (postfix.config_dir / "transport").write_text(
            f"gone@example.org relay:[127.0.0.1]:{refusing.port}\nexample.org relay:[127.0.0.1]:{sink.port}\n")
        for table in ("relay_recipients", "transport"):
            subprocess.run([postmap, "-c", str(postfix.config_dir), f"hash:{postfix.config_dir / table}"],
                           check=True, timeout=30)
        postfix.start()
        yield World(root, sink, postfix, data_dir, http_port)
    finally:
        postfix.stop()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        sink.stop()
        refusing.stop()
        dns.stop()
        shutil.rmtree(root, ignore_errors=True)


def _message(token: str, sender: str, to: str, extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {token}\r\nMessage-ID: <{token}@example.net>\r\n{extra}"
            f"\r\nbody {token}\r\n").encode()


def _bounce(token: str, original_id: str, to: str) -> bytes:
    return (f"From: MAILER-DAEMON@mx.remote.example\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender {token}\r\n"
            f"Message-ID: <{token}@mx.remote.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            f"--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered. {token}\r\n"
            "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.example\r\n\r\n"
            "Final-Recipient: rfc822; nobody@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
            f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\nSubject: hello\r\n\r\n"
            "--b--\r\n").encode()


def _mail_from(envelope: dict[str, list[str]]) -> str:
    return envelope["X-Mail-Args"][0].split()[0].strip("<>")


@pytest.fixture(scope="module")
def outbound(world: World) -> tuple[str, str]:
    """Alice, in mynetworks, writes to the outside: (her signed envelope sender, Message-ID)."""
    token = uuid.uuid4().hex
    with world.client(outside=False) as client:
        client.sendmail("alice@example.org", ["friend@remote.example"],
                        _message(token, "alice@example.org", "friend@remote.example"))
    envelope, _ = world.delivered(token)
    return _mail_from(envelope), f"<{token}@example.net>"


def test_outbound_mail_from_mynetworks_is_relayed_and_signed(outbound: tuple[str, str]) -> None:
    sender, _ = outbound
    assert sender.startswith("prvs=") and sender.endswith("=alice@example.org"), sender


def test_unknown_user_is_refused_at_rcpt(world: World) -> None:
    with world.client() as client:
        client.mail("someone@remote.example")
        code, text = client.rcpt("nobody@example.org")
    assert code == 550 and b"5.1.1" in text, text


def test_backscatter_is_refused(world: World) -> None:
    with world.client() as client:
        client.mail("<>")
        code, text = client.rcpt("alice@example.org")  # our mail is signed: an untagged bounce is not for it
        assert code == 550 and b"5.7.1" in text, text
        forged = "prvs=0123abcdef=alice@example.org"  # not a tag of ours: Postfix does not know it
        code, text = client.rcpt(forged)
        assert code == 550, text


def test_a_genuine_bounce_for_mail_sent_through_the_milter_is_delivered(world: World, outbound: tuple[str, str]) -> None:
    sender, original_id = outbound
    token = uuid.uuid4().hex
    with world.client() as client:
        client.sendmail("<>", [sender], _bounce(token, original_id, sender))
    envelope, _ = world.delivered(token)
    assert envelope["X-Rcpt-Args"][0].split()[0] == "<alice@example.org>", envelope  # the tag stripped


def test_a_genuine_bounce_through_the_srs_path_is_delivered(world: World) -> None:
    # Mail from outside is forwarded with an SRS sender...
    token = uuid.uuid4().hex
    with world.client() as client:
        client.sendmail("carol@remote.example", ["alice@example.org"],
                        _message(token, "carol@remote.example", "alice@example.org"))
    envelope, _ = world.delivered(token)
    srs_sender = _mail_from(envelope)
    assert srs_sender.startswith("SRS0=") and srs_sender.endswith("@fwd.example.org"), srs_sender
    # ... and the bounce to that SRS address reaches carol.
    bounce_token = uuid.uuid4().hex
    with world.client() as client:
        client.sendmail("<>", [srs_sender], _bounce(bounce_token, f"<{token}@example.net>", srs_sender))
    envelope, _ = world.delivered(bounce_token)
    assert envelope["X-Rcpt-Args"][0].split()[0] == "<carol@remote.example>", envelope


def _dsn_suppressed_metric(world: World) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{world.http_port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return sum(float(value) for value in re.findall(r"^scattergate_dsn_suppressed\S*\s+([0-9.e+]+)$", body, re.M))


def test_failure_after_acceptance_bounces_only_to_a_proven_sender(world: World) -> None:
    forged_token, proven_token = uuid.uuid4().hex, uuid.uuid4().hex
    before = _dsn_suppressed_metric(world)
    with world.client() as client:  # gone@ is a valid address whose delivery fails later
        client.sendmail("victim@forged.example", ["gone@example.org"],
                        _message(forged_token, "victim@forged.example", "gone@example.org"))
    with world.client() as client:
        client.sendmail(f"real@{SPF_DOMAIN}", ["gone@example.org"],
                        _message(proven_token, f"real@{SPF_DOMAIN}", "gone@example.org"))
    # The proven sender gets its DSN (through the SRS reverse path of its rewritten sender).
    envelope, dsn = world.delivered(proven_token)
    assert _mail_from(envelope) == "" and envelope["X-Rcpt-Args"][0].split()[0] == f"<real@{SPF_DOMAIN}>"
    assert "Status: 5." in dsn.as_string()
    # Once Postfix has nothing left to do, both messages have failed and the forged sender
    # has received nothing.
    wait_for(world.queue_empty, timeout=60, what="an empty Postfix queue")
    bounced = [line for line in world.postfix.log().splitlines()
               if "to=<gone@example.org>" in line and "status=bounced" in line]
    assert len(bounced) >= 2, bounced
    dsns = [data for data in world.sink.messages() if b"\nX-Mail-Args: <>" in b"\n" + data]
    assert not any(forged_token.encode() in data for data in dsns)
    assert sum(proven_token.encode() in data for data in dsns) == 1
    # ... and the suppression is logged and counted.
    log = wait_for(lambda: "sender=victim@forged.example" in world.milter_log() and world.milter_log(),
                   what="the suppression log line")
    assert "DSNs suppressed (NOTIFY=NEVER)" in log and "dsn.suppressed[" in log
    wait_for(lambda: _dsn_suppressed_metric(world) >= before + 1, what="the dsn.suppressed counter")


def test_mail_from_sendmail_is_signed_too(world: World) -> None:
    token = uuid.uuid4().hex
    sendmail = require_binary("sendmail")
    subprocess.run([sendmail, "-C", str(world.postfix.config_dir), "-f", "alice@example.org", "friend@remote.example"],
                   input=_message(token, "alice@example.org", "friend@remote.example"), check=True, timeout=60)
    envelope, _ = world.delivered(token)
    sender = _mail_from(envelope)
    assert sender.startswith("prvs=") and sender.endswith("=alice@example.org"), sender
