"""A real Postfix wired to our milter and policy service; smtp-sink downstream.

One private Postfix for the module, with three smtpd listeners:
  milter  port: smtpd_milters = our milter (milter_default_action = tempfail)
  policy  port: check_policy_service = our policy service, no milter
  dead    port: smtpd_milters = a port where nothing listens
We speak SMTP to Postfix and assert on its replies and on what smtp-sink received.
"""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.checks import CheckContext, RemoteCheck
from scattergate.config import Config
from scattergate.model import Finding, Phase
from scattergate.config_check import validate
from tests.conftest import require_binary
from tests.support.dns_server import DnsTestServer
from tests.support.sink import SmtpSink, free_port
from tests.system.postfix_fixtures import ListenerPostfix, Services, sink_dump_with, wait_for, world_dir

pytestmark = pytest.mark.system

SPF_DOMAIN = "spf-pass.test"


def _virus_check(ctx: CheckContext) -> list[Finding]:
    # Stands in for a content scanner: end-of-data refusals must reach Postfix's client.
    assert ctx.content is not None
    if b"X-Test-Virus: yes" in ctx.content:
        return [Finding("virus", "found", "Test.Signature")]
    return []


class _Stall:
    """A remote RCPT check that never answers for slow@: the policy budget must win."""

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        if ctx.recipient is not None and ctx.recipient.local == "slow":
            await asyncio.Event().wait()
        return []


class World:
    def __init__(self, root: Path, services: Services, postfix: ListenerPostfix, sink: SmtpSink,
                 policy_port: int, dead_port: int) -> None:
        self.root = root
        self.services = services
        self.postfix = postfix
        self.sink = sink
        self.milter_port = postfix.port
        self.policy_port = policy_port
        self.dead_port = dead_port

    def delivered(self, token: str):  # type: ignore[no-untyped-def]
        return wait_for(lambda: sink_dump_with(self.sink.directory, token), what=f"delivery of {token}")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_binary("postfix")
    sink_binary = require_binary("smtp-sink")
    root = world_dir("sg-postfix-")
    dns = DnsTestServer({SPF_DOMAIN: [("TXT", "v=spf1 ip4:127.0.0.1 -all")]}).start()
    (root / "recipients").write_text("user@example.org\nother@example.org\nslow@example.org\n")
    config = Config()
    config.server.hostname = "mx.test.example"
    config.state.data_dir = str(root / "data")
    config.state.flush_interval = 0.05
    config.logging.file = ""
    config.receive.domains = ["example.org"]
    config.receive.recipients_file = str(root / "recipients")
    config.dns.nameservers = ["127.0.0.1"]
    config.dns.port = dns.port
    config.policy.actions["virus.found"] = "reject"
    config.policy.replies["virus.found"] = "554 5.7.0 Virus found: {detail}"
    config.postfix.policy_budget = 0.5
    validate(config)
    services = Services(config).start()
    assert services.gateway is not None
    services.gateway.checks[Phase.DATA].local.append(_virus_check)
    services.gateway.checks[Phase.RCPT].remote.append(RemoteCheck("stall", _Stall(), 60.0))

    sink = SmtpSink(sink_binary, root / "sink", [])
    sink.start()
    policy_port, dead_port = free_port(), free_port()
    postfix = ListenerPostfix(
        root / "postfix", port=free_port(),
        settings={
            "relay_domains": "example.org",
            # elsewhere.example is routable too: a relay refusal must come from us, not from
            # Postfix having no route.
            "transport_maps": (f"inline:{{ {{example.org = relay:[127.0.0.1]:{sink.port}}},"
                               f" {{elsewhere.example = smtp:[127.0.0.1]:{sink.port}}} }}"),
            "smtpd_milters": f"inet:127.0.0.1:{services.milter_port}",
            "milter_default_action": "tempfail",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
            "sg_policy_restrictions": (f"check_policy_service inet:127.0.0.1:{services.policy_port},"
                                       " permit_mynetworks, reject_unauth_destination"),
        },
        listeners={
            policy_port: {"smtpd_milters": "", "smtpd_recipient_restrictions": "$sg_policy_restrictions"},
            dead_port: {"smtpd_milters": f"inet:127.0.0.1:{free_port()}"},
        },
    )
    try:
        postfix.start()
        yield World(root, services, postfix, sink, policy_port, dead_port)
    finally:
        postfix.stop()
        sink.stop()
        services.stop()
        dns.stop()
        shutil.rmtree(root, ignore_errors=True)


def _message(token: str, extra: str = "") -> bytes:
    return (f"From: a@example.net\r\nTo: user@example.org\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@example.net>\r\n{extra}\r\nbody {token}\r\n").encode()


def _client(port: int, outside: bool = False) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.example.net")
    if outside:  # stand for a client outside mynetworks (127.0.0.0/8)
        assert client.docmd("XCLIENT", "ADDR=192.0.2.66 NAME=[UNAVAILABLE]")[0] == 220
        client.ehlo("client.example.net")
    return client


# -- milter ------------------------------------------------------------------------------------

def test_milter_refuses_unknown_recipient_at_rcpt(world: World) -> None:
    with _client(world.milter_port) as client:
        client.mail("someone@example.net")
        code, text = client.rcpt("nobody@example.org")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("user@example.org")[0] == 250  # per recipient: the next one is fine


def test_milter_leaves_relay_to_postfix(world: World) -> None:
    # 127.0.0.0/8 is in Postfix's mynetworks: Postfix relays for it, the milter does not refuse.
    token = uuid.uuid4().hex
    with _client(world.milter_port) as client:
        client.sendmail("someone@example.org", ["friend@elsewhere.example"], _message(token))
    world.delivered(token)
    # A client outside mynetworks is refused by Postfix itself, before the milter is asked.
    with _client(world.milter_port, outside=True) as client:
        client.mail("someone@example.net")
        code, text = client.rcpt("victim@elsewhere.example")
        assert code in (454, 554) and b"Relay access denied" in text, text  # defer_unauth_destination: 454


def test_milter_refusal_at_end_of_data_reaches_the_client(world: World) -> None:
    token = uuid.uuid4().hex
    with _client(world.milter_port) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("someone@example.net", ["user@example.org"], _message(token, "X-Test-Virus: yes\r\n"))
    assert refused.value.smtp_code == 554
    assert b"5.7.0 Virus found: Test.Signature" in refused.value.smtp_error
    assert sink_dump_with(world.sink.directory, token) is None


def test_unverified_sender_is_delivered_with_notify_never(world: World) -> None:
    token = uuid.uuid4().hex
    with _client(world.milter_port) as client:
        client.sendmail("forged@no-spf.test", ["user@example.org", "other@example.org"], _message(token))
    envelope, message = world.delivered(token)
    rcpt_args = envelope.get("X-Rcpt-Args", [])
    assert len(rcpt_args) == 2 and all("NOTIFY=NEVER" in a for a in rcpt_args), envelope
    assert message["Authentication-Results"] is not None  # our headers, rendered from findings
    assert "(scattergate)" not in str(message.get_all("Received"))  # Postfix adds its own only


def test_verified_sender_keeps_its_bounces(world: World) -> None:
    token = uuid.uuid4().hex
    with _client(world.milter_port) as client:
        client.sendmail(f"real@{SPF_DOMAIN}", ["user@example.org"], _message(token))
    envelope, message = world.delivered(token)
    assert not any("NOTIFY=NEVER" in a for a in envelope.get("X-Rcpt-Args", [])), envelope
    assert "spf=pass" in str(message["Authentication-Results"])


def test_milter_down_means_tempfail_never_unchecked_acceptance(world: World) -> None:
    token = uuid.uuid4().hex
    with _client(world.dead_port) as client:
        code, _ = client.mail("someone@example.net")
        if code < 400:
            code, _ = client.rcpt("nobody@example.org")
        assert 400 <= code < 500
    assert sink_dump_with(world.sink.directory, token) is None


# -- policy service ----------------------------------------------------------------------------

def test_policy_refuses_unknown_recipient_and_leaves_relay_to_postfix(world: World) -> None:
    with _client(world.policy_port) as client:
        client.mail("someone@example.net")
        code, text = client.rcpt("nobody@example.org")  # a recipient table is configured here
        assert (code, text[:5]) == (550, b"5.1.1")
        assert text.count(b"Recipient address rejected") == 1, text
        assert client.rcpt("victim@elsewhere.example")[0] == 250  # mynetworks: Postfix relays
        assert client.rcpt("user@example.org")[0] == 250


def test_policy_delivers_known_recipient(world: World) -> None:
    token = uuid.uuid4().hex
    with _client(world.policy_port) as client:
        client.sendmail("someone@example.net", ["user@example.org"], _message(token))
    world.delivered(token)


@pytest.mark.parametrize("action, expected", [("dunno", 250), ("defer_if_permit", 450)])
def test_slow_policy_check_answers_within_budget(world: World, action: str, expected: int) -> None:
    assert world.services.policy is not None
    world.services.policy.timeout_action = action
    try:
        with _client(world.policy_port) as client:
            client.mail("someone@example.net")
            code, text = client.rcpt("slow@example.org")
        assert code == expected, text
        if expected == 450:
            assert b"4.4.3" in text
    finally:
        world.services.policy.timeout_action = "dunno"


def test_postfix_sends_only_the_macros_the_milter_asked_for(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """SMFIF_SETSYMLIST: Postfix would otherwise expand and send a dozen macros at each step;
    the stages we read nothing at come empty (not even the host name "j")."""
    from scattergate.frontends import milter_codec as mc
    from scattergate.frontends.milter import MilterConnection

    seen: set[str] = set()
    packets: list[str] = []
    original = MilterConnection.take_macros

    def recording(self: MilterConnection, command: mc.Macros) -> None:
        seen.update(command.values)
        packets.append(command.command)
        original(self, command)

    monkeypatch.setattr(MilterConnection, "take_macros", recording)
    token = uuid.uuid4().hex
    with _client(world.milter_port) as client:
        client.sendmail("someone@example.net", ["user@example.org"], _message(token))
    world.delivered(token)
    assert "{daemon_name}" in seen, sorted(seen)
    assert {"C", "M", "R", "L", "B", "E"} <= set(packets), packets  # every stage still passes by
    assert seen <= {"{auth_authen}", "{daemon_name}"}, sorted(seen)
