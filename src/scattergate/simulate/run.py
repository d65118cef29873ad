"""`scattergate simulate`: the showcase, on loopback, in a few seconds.

It starts a gateway (spool mode, its default checks), a throwaway DNS server publishing the
senders' SPF records, and a downstream that knows some of our users (one of them with a full
mailbox, so some mail fails *after* acceptance); it replays a traffic mix and prints what
scattergate did beside what a naive accept-then-bounce server would have done.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib

from scattergate.config import Config
from scattergate.frontends.smtp import gateway_connection
from scattergate.frontends.smtp_protocol import Settings
from scattergate.frontends.smtp_server import MailboxHandler, SmtpConnection, Timing
from scattergate.pipeline import Gateway
from scattergate.simulate.dns_server import DnsTestServer
from scattergate.state.sqlite import SqliteStore
from scattergate.config_check import validate

DOMAIN = "example.org"
USERS = {"alice", "bob", "full"}  # full@ exists, but its mailbox is full: fails after DATA
OUTSIDE = ("127.0.0.2", 0)  # the Internet; our own users connect from 127.0.0.1
ZONE = {
    "forged.example.": [("TXT", "v=spf1 -all")],
    "soft.example.": [("TXT", "v=spf1 ~all")],
    "legit.example.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
}


class Downstream:
    """The site's mail store: knows USERS at DOMAIN, relays everything else (records it)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    def connection(self) -> SmtpConnection:
        return SmtpConnection(_STORE, Timing(), lambda peer: _StoreSession(self, peer))


_STORE = Settings(hostname="store.example")


class _StoreSession(MailboxHandler):
    def __init__(self, store: Downstream, peer: object) -> None:
        super().__init__(peer)
        self.store = store

    def check_recipient(self, address: str) -> str | None:
        local, _, domain = address.lower().partition("@")
        if domain == DOMAIN and local not in USERS:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        return None

    def take(self, sender: str, recipients: tuple[str, ...], content: bytes) -> str:
        if any(r.lower() == f"full@{DOMAIN}" for r in recipients):
            return "552 5.2.2 <full@example.org>: Mailbox full"
        self.store.received.append((sender, list(recipients), content))
        return "250 2.0.0 Ok: queued"


@dataclass
class Tally:
    backscatter_emitted: int = 0
    legit_failures: int = 0
    legit_notified: int = 0
    backscatter_aimed: int = 0
    backscatter_received: int = 0
    genuine_bounces: int = 0
    genuine_delivered: int = 0
    refused_in_dialogue: int = 0
    quarantined: int = 0


def _message(sender: str, rcpt: str, tag: str) -> bytes:
    return (f"From: <{sender or 'mailer-daemon@remote.example'}>\r\nTo: <{rcpt}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@simulate.example>\r\n\r\n{tag}\r\n").encode()


def _bounce(to: str, original_id: str, tag: str) -> bytes:
    return (
        f"From: MAILER-DAEMON@remote.example\r\nTo: <{to}>\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Auto-Submitted: auto-replied\r\nMessage-ID: <{tag}@remote.example>\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; remote.example\r\n\r\n"
        "Final-Recipient: rfc822; friend@remote.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original_id}\r\nSubject: hello\r\n\r\n--b--\r\n"
    ).encode()


async def _send(port: int, sender: str, rcpt: str, data: bytes, *, outside: bool = True) -> bool:
    """True when the gateway answered 250 at end of DATA."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False,
                             source_address=OUTSIDE if outside else None)
    await client.connect()
    try:
        await client.sendmail(sender, [rcpt], data)
        return True
    except aiosmtplib.SMTPException:
        return False
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()


async def simulate(rounds: int = 5, *, progress=None) -> tuple[Tally, Tally]:  # type: ignore[no-untyped-def]
    """Run the mix `rounds` times; return (scattergate, naive accept-then-bounce server)."""
    work = Path(tempfile.mkdtemp(prefix="scattergate-simulate-"))
    dns = DnsTestServer(ZONE).start()
    downstream = Downstream()
    loop = asyncio.get_running_loop()
    down_server = await loop.create_server(downstream.connection, "127.0.0.1", 0)
    config = Config()
    config.server.listen = "127.0.0.1:0"
    config.server.hostname = "mx.example.org"
    config.receive.domains = [DOMAIN]
    config.receive.trusted_networks = ["127.0.0.1/32"]
    config.delivery.relay = f"127.0.0.1:{down_server.sockets[0].getsockname()[1]}"
    config.spool.enabled = True
    config.spool.retry_initial = config.spool.retry_max = 0.2
    config.dns.nameservers, config.dns.port = ["127.0.0.1"], dns.port
    config.state.data_dir = str(work)
    config.logging.file = ""
    validate(config)
    store = SqliteStore(work / "state.sqlite3")
    gateway = Gateway(config, store)
    await gateway.start()
    server = await loop.create_server(lambda: gateway_connection(gateway), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sg, naive = Tally(), Tally()
    forged: set[str] = set()
    legit_failing: set[str] = set()
    try:
        for n in range(rounds):
            if progress:
                progress(f"round {n + 1}/{rounds}")
            # Forged-sender spam: to a real user, an unknown one, and the full mailbox.
            for domain in ("forged.example", "soft.example"):
                victim = f"victim{n}@{domain}"
                forged.add(victim)
                for user in ("alice", f"nobody{n}", "full"):
                    ok = await _send(port, victim, f"{user}@{DOMAIN}", _message(victim, user, f"spam-{domain}-{user}-{n}"))
                    sg.refused_in_dialogue += not ok
                    if user != "alice":
                        naive.backscatter_emitted += 1  # accepted, failed, bounced to the victim
            # Legitimate senders (SPF pass): one message delivered, one to an unknown user,
            # one to the full mailbox (fails after acceptance).
            friend = f"friend{n}@legit.example"
            for user in ("bob", f"typo{n}", "full"):
                ok = await _send(port, friend, f"{user}@{DOMAIN}", _message(friend, user, f"legit-{user}-{n}"))
                if user != "bob":
                    sg.legit_failures += 1
                    naive.legit_failures += 1
                    naive.legit_notified += 1
                    if not ok:
                        sg.legit_notified += 1  # refused in the dialogue: the sender's own MTA tells it
                        sg.refused_in_dialogue += 1
                    else:
                        legit_failing.add(friend)
            # Backscatter aimed at us: a bounce for mail we never sent.
            sg.backscatter_aimed += 1
            naive.backscatter_aimed += 1
            naive.backscatter_received += 1
            if await _send(port, "", f"alice@{DOMAIN}", _bounce(f"alice@{DOMAIN}", "<never@example.org>", f"bs-{n}")):
                sg.backscatter_received += 1
            else:
                sg.refused_in_dialogue += 1
            # A genuine bounce for our own mail: alice writes out, the remote end bounces it.
            await _send(port, f"alice@{DOMAIN}", "friend@remote.example",
                        _message(f"alice@{DOMAIN}", "friend@remote.example", f"out-{n}"), outside=False)
            mark = f"Subject: out-{n}\r\n".encode()
            await _wait(lambda: any(mark in content for _, _, content in downstream.received))
            signed = next(sender for sender, _, content in downstream.received if mark in content)
            sg.genuine_bounces += 1
            naive.genuine_bounces += 1
            naive.genuine_delivered += 1
            if await _send(port, "", signed, _bounce(signed, f"<out-{n}@simulate.example>", f"gb-{n}")):
                sg.genuine_delivered += 1
        assert gateway.spool is not None
        await _wait(lambda: len(gateway.spool) == 0, timeout=60)  # type: ignore[arg-type]
        dsn_to = [rcpt for sender, rcpts, _ in downstream.received if sender in ("", "<>") for rcpt in rcpts]
        sg.backscatter_emitted = sum(1 for r in dsn_to if r in forged)
        sg.legit_notified += len(legit_failing & set(dsn_to))
        sg.quarantined = len(store.quarantine_list(10_000))
    finally:
        server.close()
        await gateway.stop()
        down_server.close()
        store.close()
        dns.stop()
        shutil.rmtree(work, ignore_errors=True)
    return sg, naive


async def _wait(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("simulation did not settle")
        await asyncio.sleep(0.02)


def table(sg: Tally, naive: Tally) -> str:
    def share(part: int, whole: int) -> str:
        return f"{part}/{whole}" + (f" ({100 * part / whole:.0f}%)" if whole else "")

    rows = [
        ("backscatter emitted (DSNs to forged senders)", str(naive.backscatter_emitted), str(sg.backscatter_emitted)),
        ("legitimate senders told of their failures", share(naive.legit_notified, naive.legit_failures),
         share(sg.legit_notified, sg.legit_failures)),
        ("backscatter received (bounces for mail never sent, delivered)",
         share(naive.backscatter_received, naive.backscatter_aimed), share(sg.backscatter_received, sg.backscatter_aimed)),
        ("genuine bounces for our own mail delivered", share(naive.genuine_delivered, naive.genuine_bounces),
         share(sg.genuine_delivered, sg.genuine_bounces)),
        ("refused inside the SMTP dialogue", "0", str(sg.refused_in_dialogue)),
        ("quarantined instead of bounced", "0", str(sg.quarantined)),
    ]
    lines = ["| | naive accept-then-bounce | scattergate |", "|---|---:|---:|"]
    lines += [f"| {label} | {a} | {b} |" for label, a, b in rows]
    return "\n".join(lines)
