"""clamd INSTREAM codec against canned replies, a canned clamd on a unix socket, and the
scanner plumbing shared by all three scanners (config, policy, failure mapping, CLI flags)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from scattergate.address import Address
from scattergate.checks import CheckContext
from scattergate.checks.clamav import ClamdScanner, encode_instream, parse_reply
from scattergate.assembly import build_scanners
from scattergate.checks.scanners import ScanError, parse_address, scanner_check
from scattergate.cli import apply_overrides, build_parser
from scattergate.config import ClamavConfig, Config, ConfigError, from_dict
from scattergate.decision.policy import Decider
from scattergate.model import Accept, Envelope, Finding, Quarantine, Reject, Session, Tempfail
from scattergate.config_check import validate


def context(content: bytes) -> CheckContext:
    envelope = Envelope(Address("a", "sender.example"), recipients=[Address("b", "example.org")])
    return CheckContext(Session("192.0.2.7", helo="mta.example"), envelope, content=content)


# -- codec ------------------------------------------------------------------------------------

def test_instream_frames_chunks_with_big_endian_lengths_and_a_zero_end() -> None:
    data = memoryview(b"x" * 10)
    pieces = list(encode_instream(data, chunk=4))
    assert pieces[0] == b"zINSTREAM\0"
    assert [bytes(p) for p in pieces[1:]] == [
        struct.pack(">I", 4), b"xxxx", struct.pack(">I", 4), b"xxxx", struct.pack(">I", 2), b"xx", b"\0\0\0\0"
    ]
    # Slices of the caller's buffer, not copies of the message.
    assert all(p.obj is data.obj for p in pieces if isinstance(p, memoryview))


def test_empty_message_is_just_the_command_and_the_end() -> None:
    assert [bytes(p) for p in encode_instream(memoryview(b""))] == [b"zINSTREAM\0", b"\0\0\0\0"]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"stream: OK\0", None),
    (b"stream: Test.EICAR.HDB.UNOFFICIAL FOUND\0", "Test.EICAR.HDB.UNOFFICIAL"),
    (b"stream: Win.Test.EICAR_HDB-1 FOUND\0", "Win.Test.EICAR_HDB-1"),
])
def test_clamd_verdicts(raw: bytes, expected: str | None) -> None:
    assert parse_reply(raw) == expected


@pytest.mark.parametrize(("raw", "message"), [
    (b"INSTREAM size limit exceeded. ERROR\0", "clamd error: INSTREAM size limit exceeded"),
    (b"UNKNOWN COMMAND\0", "unexpected clamd reply"),
    (b"stream: FOUND\0", "unexpected clamd reply"),
    (b"stream: two words FOUND\0", "unexpected clamd reply"),
    (b"\x00", "unexpected clamd reply"),
    (b"HTTP/1.1 200 OK\r\n\r\n", "unexpected clamd reply"),
])
def test_clamd_errors_and_garbage_raise(raw: bytes, message: str) -> None:
    with pytest.raises(ScanError, match=message):
        parse_reply(raw)


# -- against a canned clamd on a unix socket --------------------------------------------------

async def canned_clamd(path: Path, reply: bytes, received: list[bytes]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(10) == b"zINSTREAM\0"
        data = bytearray()
        while (size := struct.unpack(">I", await reader.readexactly(4))[0]) != 0:
            data += await reader.readexactly(size)
        received.append(bytes(data))
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


async def test_scan_streams_the_message_over_a_unix_socket(tmp_path: Path) -> None:
    received: list[bytes] = []
    server = await canned_clamd(tmp_path / "clamd.sock", b"stream: Eicar-Signature FOUND\0", received)
    content = b"Subject: x\r\n\r\n" + b"y" * 200_000
    scanner = ClamdScanner(ClamavConfig(address=f"unix:{tmp_path / 'clamd.sock'}"))
    async with server:
        findings = await scanner.scan(context(content))
    assert received == [content]
    assert findings == [Finding("clamav", "virus", "Eicar-Signature")]


async def test_above_the_cap_only_the_prefix_is_streamed_and_the_finding_says_so(tmp_path: Path) -> None:
    received: list[bytes] = []
    server = await canned_clamd(tmp_path / "clamd.sock", b"stream: OK\0", received)
    scanner = ClamdScanner(ClamavConfig(address=f"unix:{tmp_path / 'clamd.sock'}", max_size=1000))
    async with server:
        (finding,) = await scanner.scan(context(b"z" * 5000))
    assert received == [b"z" * 1000]
    assert finding == Finding("clamav", "clean", "scanned=1000 size=5000")


async def test_failures_become_failed_or_skipped_per_on_failure(tmp_path: Path) -> None:
    missing = f"unix:{tmp_path / 'absent.sock'}"
    for on_failure, result in (("tempfail", "failed"), ("accept", "skipped")):
        settings = ClamavConfig(enabled=True, address=missing, on_failure=on_failure)
        check = scanner_check("clamav", ClamdScanner(settings).scan, settings)
        assert await check.run(context(b"x")) == [Finding("clamav", result, "not running (connection refused)")]


async def test_a_scan_past_its_budget_is_a_finding_not_an_exception() -> None:
    async def never(ctx: CheckContext) -> list[Finding]:
        await asyncio.Event().wait()
        return []

    check = scanner_check("clamav", never, ClamavConfig(budget=0.05))
    assert await check.run(context(b"x")) == [Finding("clamav", "failed", "no answer within 0.05 s")]
    assert check.budget > 0.05  # the runner's own timeout is only a backstop


# -- policy -----------------------------------------------------------------------------------

def test_virus_is_rejected_554_with_the_signature() -> None:
    verdict = Decider().decide([Finding("clamav", "virus", "Test.EICAR.HDB.UNOFFICIAL")])
    assert isinstance(verdict, Reject)
    assert str(verdict.reply) == "554 5.7.1 Message refused: virus found (Test.EICAR.HDB.UNOFFICIAL)"


@pytest.mark.parametrize("result", ["failed", "timeout", "error"])
@pytest.mark.parametrize("scanner", ["clamav", "spamd", "rspamd"])
def test_scanner_failures_tempfail_451_471(scanner: str, result: str) -> None:
    verdict = Decider().decide([Finding(scanner, result, "not running (connection refused)")])
    assert isinstance(verdict, Tempfail)
    assert (verdict.reply.code, verdict.reply.status) == (451, "4.7.1")
    assert "not running" in verdict.reply.text


@pytest.mark.parametrize("result", ["skipped", "oversize", "clean"])
def test_skipped_oversize_and_clean_accept(result: str) -> None:
    assert isinstance(Decider().decide([Finding("clamav", result, "x")]), Accept)


def test_virus_beats_a_failing_spam_scanner() -> None:
    findings = [Finding("spamd", "failed", "down"), Finding("clamav", "virus", "Eicar")]
    assert isinstance(Decider().decide(findings), Reject)


# -- config and CLI -----------------------------------------------------------------------------

def test_scan_section_from_toml_tables() -> None:
    config = from_dict({"scan": {
        "clamav": {"enabled": True, "address": "unix:/run/clamav/clamd.ctl", "budget": 5},
        "spamd": {"enabled": True, "address": "127.0.0.1:783", "tag_score": 4, "reject_score": 8.5},
        "rspamd": {"enabled": True, "on_failure": "accept"},
    }})
    validate(config)
    assert config.scan.clamav.budget == 5.0 and config.scan.spamd.reject_score == 8.5
    assert config.scan.rspamd.address == "127.0.0.1:11333"  # its own default
    assert [c.name for c in build_scanners(config.scan, "mx.example")] == ["clamav", "spamd", "rspamd"]
    assert build_scanners(Config().scan, "mx.example") == []  # all off by default


@pytest.mark.parametrize(("raw", "message"), [
    ({"clamav": {"port": 3310}}, "unknown configuration key: scan.clamav.port"),
    ({"rspamd": {"tag_score": 3}}, "unknown configuration key: scan.rspamd.tag_score"),
    ({"clamav": {"address": "clamd.sock"}}, "scan.clamav.address: expected HOST:PORT"),
    ({"clamav": {"address": "unix:relative.sock"}}, "absolute path"),
    ({"spamd": {"on_failure": "bounce"}}, "scan.spamd.on_failure"),
    ({"spamd": {"enabled": True, "budget": 60}}, "must stay below server.data_deadline"),
    ({"spamd": {"tag_score": 9, "reject_score": 5}}, "tag_score must not be above"),
    ({"rspamd": {"max_size": 0}}, "scan.rspamd.max_size must be positive"),
])
def test_bad_scan_settings_are_named(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(from_dict({"scan": raw}))


def test_address_forms() -> None:
    assert str(parse_address("unix:/run/clamav/clamd.ctl")) == "unix:/run/clamav/clamd.ctl"
    assert str(parse_address("[::1]:783")) == "::1:783"
    assert parse_address("localhost:11333").port == 11333


def test_cli_flags_enable_scanners() -> None:
    args = build_parser().parse_args(["serve", "--clamd", "unix:/tmp/c.sock", "--rspamd", "127.0.0.1:11333"])
    config = apply_overrides(Config(), args)
    assert (config.scan.clamav.enabled, config.scan.clamav.address) == (True, "unix:/tmp/c.sock")
    assert config.scan.rspamd.enabled and not config.scan.spamd.enabled


def test_quarantine_by_policy_for_tagged_spam() -> None:
    from scattergate.config import PolicyConfig

    decider = Decider(PolicyConfig(actions={"spamd.tagged": "quarantine"}))
    assert isinstance(decider.decide([Finding("spamd", "tagged", "required=5", 6.0)]), Quarantine)
