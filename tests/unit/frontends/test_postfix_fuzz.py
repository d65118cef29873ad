"""Fuzzing the milter and the policy service (issue 15.2/15.3): seeded mutations of valid
traffic, bytes that are not UTF-8 in every text field, through the real Gateway.

Every session must end in a decision or a protocol-error close: never an exception, never
the "internal error" tempfail that stands for one, every end of message answered and its
decision recorded, and the process must not grow with the traffic. Bounded: a fixed number of
sessions from a fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import logging
import random
import resource
from pathlib import Path
from typing import AsyncIterator

import pytest

from scattergate.decision.record import DecisionRecord
from scattergate.frontends import milter_codec as mc
from scattergate.frontends import policy_codec as pc
from scattergate.frontends.milter import INTERNAL_ERROR, MemoryBudget, MilterConnection
from scattergate.frontends.policy import ERROR_REPLY, PolicyService
from scattergate.frontends.postfix_side import for_policy_service
from scattergate.model import Verdict
from scattergate.pipeline import Gateway
from tests.support.gateway import running_gateway

SESSIONS = 400
NOT_UTF8 = [b"\xff", b"\xfe\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xf4\x90\x80\x80", b"\x1b[31m"]


class Decisions:
    """A recorder observer: the decisions made, by phase."""

    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def decided(self, record: DecisionRecord, verdict: Verdict) -> None:
        self.records.append(record)

    def counted(self, name: str, amount: int) -> None:
        pass


@pytest.fixture
async def gateway(make_config, tmp_path: Path) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    config = make_config(receive={"domains": ["example.org"]},
                         server={"max_message_size": 64 * 1024, "max_header_size": 8 * 1024})
    async with running_gateway(for_policy_service(config), behind_postfix=True) as gw:
        yield gw


def _text(rng: random.Random, base: str) -> str:
    """`base` with bytes that are not UTF-8 spliced in, as the codec decodes them."""
    raw = bytearray(base.encode())
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(raw))
        raw[at:at] = rng.choice(NOT_UTF8)
    return raw.decode("utf-8", "surrogateescape")


def _session(rng: random.Random) -> list[mc.Command]:
    def maybe(base: str) -> str:
        return _text(rng, base) if rng.random() < 0.5 else base

    body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    commands: list[mc.Command] = [
        mc.OptNeg(6, 0x1FF, 0x1FFFFF),
        mc.Macros("C", {"{daemon_name}": maybe("mx")}),
        mc.Connect(maybe("client.example.net"), "4", rng.randint(1, 65535), "192.0.2.%d" % rng.randint(1, 254)),
        mc.Helo(maybe("client.example.net")),
        mc.Macros("M", {"{auth_authen}": maybe("") if rng.random() < 0.2 else ""}),
        mc.Mail(f"<{maybe('someone@example.net')}>" if rng.random() < 0.8 else "<>", (maybe("BODY=8BITMIME"),)),
        mc.Rcpt(f"<{maybe('alice@example.org')}>", (maybe("NOTIFY=FAILURE"),)),
        mc.Rcpt(f"<{maybe('prvs=0123abcdef=bob@example.org')}>", ()),
        mc.Header(maybe("Subject"), " " + maybe("hello")),
        mc.Header("Message-ID", " " + maybe("<id@example.net>")),
        mc.Body(body),
        mc.EndOfMessage(),
        mc.Quit(),
    ]
    return commands


def _mutate(rng: random.Random, wire: bytes) -> bytes:
    """Byte-level damage to an encoded stream: flips, cuts, repeats."""
    data = bytearray(wire)
    for _ in range(rng.randint(0, 4)):
        kind = rng.random()
        if not data:
            break
        at = rng.randrange(len(data))
        if kind < 0.4:
            data[at] = rng.getrandbits(8)
        elif kind < 0.6:
            del data[at:at + rng.randint(1, 16)]
        elif kind < 0.8:
            data[at:at] = rng.choice(NOT_UTF8)
        else:
            data[at:at] = data[at:at + rng.randint(1, 64)]
    return bytes(data)


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def test_milter_survives_mutated_traffic(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1515)
    decisions = Decisions()
    gateway.recorder.observers.append(decisions)
    memory = MemoryBudget(1 << 20)
    answered_ends = 0
    before = _rss_kib()
    with caplog.at_level(logging.INFO, logger="scattergate"):
        for number in range(SESSIONS):
            wire = b"".join(mc.encode_command(c) for c in _session(rng))
            if number % 2:  # half the sessions are damaged on the wire, half only in their text
                wire = _mutate(rng, wire)
            conn = MilterConnection(gateway, memory=memory)
            decoder = mc.Decoder()
            try:
                for command in decoder.feed(wire):
                    # An end of message to decide: a transaction, or a refusal kept for it.
                    deciding = isinstance(command, mc.EndOfMessage) and conn.session is not None and (
                        conn.session.envelope is not None or conn._pending_refusal() is not None)
                    responses = await conn.handle(command)
                    assert responses is None or mc.TempfailReply(INTERNAL_ERROR) not in responses, (number, command)
                    if deciding:
                        assert responses, (number, "end of message not answered")
                        answered_ends += 1
                    if responses is None:
                        break
            except mc.MilterProtocolError:
                pass  # the defined answer to a broken stream: close the connection
            finally:
                conn.close()
            assert memory.used == 0  # nothing held once the connection is gone
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
    data_decisions = [r for r in decisions.records if r.phase == "data"]
    assert answered_ends > SESSIONS // 4
    # Each answered end of message was decided and recorded (no lost decision)...
    assert len(data_decisions) == answered_ends
    # ... and logged, with the text the client sent, as far as the log line goes ...
    assert sum("decision session=" in r.getMessage() for r in caplog.records) >= answered_ends
    # ... and in the state store: one undecodable record never loses the others (issue 15.3).
    await gateway.recorder.flush()
    from scattergate.state.factory import open_store

    reader = open_store(gateway.config)  # what an admin's dashboard or CLI would read
    try:
        stored = reader.recent_decisions(limit=10 * len(decisions.records) + 10)
    finally:
        reader.close()
    assert len(stored) == len(decisions.records)
    assert _rss_kib() - before < 64 * 1024, "the milter grew with the traffic"


async def test_policy_survives_mutated_traffic(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1516)
    service = PolicyService(gateway)
    answers = 0
    before = _rss_kib()
    with caplog.at_level(logging.INFO, logger="scattergate"):
        for number in range(SESSIONS):
            request = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                       "client_address": "192.0.2.%d" % rng.randint(1, 254),
                       "helo_name": _text(rng, "client.example.net"), "sender": _text(rng, "a@example.net"),
                       "recipient": _text(rng, rng.choice(["alice@example.org", "prvs=0123abcdef=bob@example.org"])),
                       "sasl_username": _text(rng, "") if rng.random() < 0.1 else "",
                       "instance": _text(rng, "1a2b.3c")}
            wire = pc.encode_request(request)
            if number % 2:
                wire = _mutate(rng, wire)
            try:
                for parsed in pc.Decoder().feed(wire):
                    answer = await service.answer(parsed)
                    assert answer != pc.DeferIfPermit(ERROR_REPLY), (number, parsed)
                    pc.encode(answer)  # the answer can be written back
                    answers += 1
            except pc.PolicyProtocolError:
                pass
    assert answers > SESSIONS // 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an error was logged"
    assert _rss_kib() - before < 64 * 1024


async def test_a_large_body_is_not_held_whole(gateway: Gateway) -> None:
    """15.2: a body far past the limit, as Postfix streams it, costs no more than the limit."""
    memory = MemoryBudget(1 << 30)
    conn = MilterConnection(gateway, memory=memory)
    chunk = b"y" * 65535
    for command in (mc.OptNeg(6, 0x1FF, 0x1FFFFF), mc.Connect("c", "4", 1, "192.0.2.1"),
                    mc.Mail("<a@example.net>", ()), mc.Rcpt("<alice@example.org>", ())):
        await conn.handle(command)
    for _ in range(500):  # ~32 MiB
        await conn.handle(mc.Body(chunk))
        assert memory.used <= gateway.config.server.max_message_size
    out = await conn.handle(mc.EndOfMessage())
    assert out is not None and isinstance(out[-1], mc.RejectReply) and out[-1].reply.code == 552
    conn.close()


def test_the_log_file_keeps_a_line_with_bytes_that_are_not_utf8(make_config) -> None:  # type: ignore[no-untyped-def]
    """The decision line of a client that sent such bytes must not be lost on the way out."""
    from scattergate.serve import setup_logging

    config = make_config(logging={"file": "scattergate.log"})
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(config)
        logging.getLogger("scattergate.decision").warning("decision helo=%s", "a\udcffb")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert "decision helo=a\\udcffb" in (config.data_dir / "scattergate.log").read_text()
