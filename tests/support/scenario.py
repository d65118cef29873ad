"""The backscatter-emitted scenario: a traffic mix through spool mode, counting every DSN.

    senders ──SMTP──► scattergate --spool ──► Postfix (knows only some recipients) ──► smtp-sink
                          │  DNS: loopback server with the senders' SPF and DKIM records
                          └─ DSNs leave the same way, so smtp-sink sees every one we send

Shared by tests/integration/test_backscatter_scenario.py (asserts) and
bench/backscatter_scenario.py (prints the table).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dkim

from scattergate.config import Config
from scattergate.config_check import validate
from tests.support.dns_server import DnsTestServer
from tests.support.gateway import GatewayThread
from tests.support.postfix import PrivatePostfix
from tests.support.sink import SmtpSink, free_port

OUR_DOMAIN = "example.org"
KNOWN_USERS = ("alice", "bob")  # the downstream refuses every other local part

# Sender domains and what they publish.
FORGED = "forged.example"  # v=spf1 -all: forged mail is refused at RCPT (SPF fail)
SOFT = "soft.example"  # v=spf1 ~all: spam from here is accepted, sender unproven
LEGIT = "legit.example"  # SPF passes for our loopback client
SIGNED = "signed.example"  # no SPF; mail carries a valid aligned DKIM signature
SELECTOR = "s1"


def make_dkim_key(directory: Path) -> tuple[bytes, str]:
    """A throwaway RSA key: (private PEM, public key base64 for the DNS record)."""
    key = directory / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    import base64

    return key.read_bytes(), base64.b64encode(der).decode()


@dataclass
class Outcome:
    sent: int = 0
    refused_in_dialogue: int = 0
    accepted: int = 0
    delivered: int = 0
    dsn_to_forged: int = 0  # DSNs to senders we could not prove genuine: must be 0
    legit_failures: int = 0  # failures of proven senders' mail
    legit_told: int = 0  # ... of which a DSN reached the sender
    quarantined: int = 0
    dsn_recipients: list[str] = field(default_factory=list)


class Scenario:
    def __init__(self, make_config_dir: Path | None = None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="sg-scenario-"))
        self.work.chmod(0o755)  # Postfix runs as 'postfix' and must reach its queue
        self.private_key, public = make_dkim_key(self.work)
        self.dns = DnsTestServer({
            f"{FORGED}.": [("TXT", "v=spf1 -all")],
            f"{SOFT}.": [("TXT", "v=spf1 ~all")],
            f"{LEGIT}.": [("TXT", "v=spf1 ip4:127.0.0.0/8 -all")],
            f"{SELECTOR}._domainkey.{SIGNED}.": [("TXT", f"v=DKIM1; k=rsa; p={public}")],
        })
        self.sink = SmtpSink("/usr/sbin/smtp-sink", self.work / "sink", [])
        self.postfix: PrivatePostfix | None = None
        self.gateway: GatewayThread | None = None

    def start(self, config: Config | None = None) -> None:
        """Start every part; `config` (default: a fresh one) gets the scenario's settings."""
        if config is None:
            config = Config()
            config.server.listen = "127.0.0.1:0"
            config.server.hostname = "mx.test.example"
            config.logging.file = ""
            config.state.data_dir = str(self.work / "gateway")
        self.dns.start()
        self.sink.start()
        known = ", ".join(f"{{{u}@{OUR_DOMAIN} = ok}}" for u in KNOWN_USERS)
        self.postfix = PrivatePostfix(self.work / "postfix", port=free_port(), settings={
            "relay_domains": OUR_DOMAIN,
            "relay_recipient_maps": f"inline:{{ {known} }}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "default_transport": f"relay:[127.0.0.1]:{self.sink.port}",
            "relay_transport": f"relay:[127.0.0.1]:{self.sink.port}",
        })
        self.postfix.start()
        config.delivery.relay = self.postfix.address
        config.delivery.verify_recipients = False  # failures must happen *after* acceptance
        config.spool.enabled = True
        config.spool.retry_initial = 0.2
        config.spool.retry_max = 1.0
        config.receive.domains = [OUR_DOMAIN]
        config.auth.spf = config.auth.dkim = config.auth.dmarc = True
        config.dns.nameservers = ["127.0.0.1"]
        config.dns.port = self.dns.port
        validate(config)
        self.gateway = GatewayThread(config)
        self.gateway.start()

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.postfix is not None:
            self.postfix.stop()
        self.sink.stop()
        self.dns.stop()

    # -- traffic -----------------------------------------------------------------------------

    def message(self, sender: str, rcpt: str, tag: str, *, sign: bool = False) -> bytes:
        body = (
            f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@{sender.split('@')[1]}>\r\n\r\nscenario message {tag}\r\n"
        ).encode()
        if sign:
            signature = dkim.sign(body, SELECTOR.encode(), SIGNED.encode(), self.private_key,
                                  include_headers=[b"from", b"to", b"subject", b"message-id"])
            body = signature.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + body
        return body

    def send(self, sender: str, rcpt: str, data: bytes) -> bool:
        """True when the gateway accepted the message (250 at end of DATA)."""
        assert self.gateway is not None
        with smtplib.SMTP(*self.gateway.address) as client:
            client.ehlo("sender.example")
            try:
                client.sendmail(sender, [rcpt], data)
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused):
                return False
        return True

    def wait_until_spool_empty(self, timeout: float = 60) -> None:
        """Wait until our spool *and* Postfix's queue are empty: only then has everything that
        will reach the sink reached it (Postfix relays what we hand it a moment later)."""
        assert self.gateway is not None and self.gateway.gateway.spool is not None
        assert self.postfix is not None
        spool = self.gateway.gateway.spool
        config_dir = str(self.postfix.config_dir)

        def postfix_queue_empty() -> bool:
            listing = subprocess.run(["postqueue", "-c", config_dir, "-p"], capture_output=True, text=True)
            return "Mail queue is empty" in listing.stdout

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not len(spool) and postfix_queue_empty():
                return
            time.sleep(0.05)  # polling a condition, bounded by the deadline
        raise AssertionError(f"{len(spool)} messages still spooled, or Postfix's queue is not empty")

    def sink_dumps(self) -> list[tuple[str, list[str], bytes]]:
        """(envelope sender, recipients, content) of everything that reached the sink."""
        result = []
        for raw in self.sink.messages():
            head = raw.split(b"\n\n", 1)[0].decode("utf-8", "replace")
            sender = re.search(r"^X-Mail-Args: <([^>]*)>", head, re.M)
            rcpts = re.findall(r"^X-Rcpt-Args: <([^>]*)>", head, re.M)
            result.append((sender.group(1) if sender else "?", rcpts, raw))
        return result

    def run(self, rounds: int = 3) -> Outcome:
        """Replay the mix `rounds` times; count what became of it."""
        outcome = Outcome()
        legit_failing: set[str] = set()
        unproven: set[str] = set()
        for n in range(rounds):
            mix = [
                # forged-sender spam at -all domains, to real and unknown users
                (f"victim{n}@{FORGED}", f"alice@{OUR_DOMAIN}", f"forged-{n}", False, "unproven"),
                (f"victim{n}@{FORGED}", f"ghost{n}@{OUR_DOMAIN}", f"forged-ghost-{n}", False, "unproven"),
                # spam from a ~all domain to a user the downstream does not know: accepted, fails
                (f"victim{n}@{SOFT}", f"nobody{n}@{OUR_DOMAIN}", f"soft-ghost-{n}", False, "unproven"),
                (f"victim{n}@{SOFT}", f"bob@{OUR_DOMAIN}", f"soft-{n}", False, "unproven"),
                # backscatter aimed at us: a bounce (null sender) to an unknown user
                ("", f"former{n}@{OUR_DOMAIN}", f"bounce-{n}", False, "unproven"),
                # legitimate senders: SPF pass, or aligned DKIM; some to unknown users
                (f"friend{n}@{LEGIT}", f"alice@{OUR_DOMAIN}", f"legit-{n}", False, "legit"),
                (f"friend{n}@{LEGIT}", f"typo{n}@{OUR_DOMAIN}", f"legit-typo-{n}", False, "legit"),
                (f"writer{n}@{SIGNED}", f"bob@{OUR_DOMAIN}", f"signed-{n}", True, "legit"),
                (f"writer{n}@{SIGNED}", f"gone{n}@{OUR_DOMAIN}", f"signed-gone-{n}", True, "legit"),
            ]
            for sender, rcpt, tag, sign, kind in mix:
                outcome.sent += 1
                data = self.message(sender or f"mailer-daemon@{SOFT}", rcpt, tag, sign=sign)
                if not self.send(sender, rcpt, data):
                    outcome.refused_in_dialogue += 1
                    continue
                outcome.accepted += 1
                if rcpt.split("@")[0] not in KNOWN_USERS:
                    (legit_failing if kind == "legit" else unproven).add(sender)
        self.wait_until_spool_empty()
        assert self.gateway is not None
        for sender, rcpts, raw in self.sink_dumps():
            if sender == "":
                outcome.dsn_recipients.extend(rcpts)
            else:
                outcome.delivered += 1
        outcome.dsn_to_forged = sum(1 for r in outcome.dsn_recipients if r in unproven or not r)
        outcome.legit_failures = len(legit_failing)
        outcome.legit_told = len(legit_failing & set(outcome.dsn_recipients))
        outcome.quarantined = len(self.gateway.store.quarantine_list(1000))
        return outcome
