from pathlib import Path

import pytest

from scattergate.address import parse_path
from scattergate.checks import CheckContext
from scattergate.checks.limits import RecipientLimit
from scattergate.checks.recipients import RecipientCheck, RecipientTable
from scattergate.checks.relay import RelayCheck
from scattergate.checks.smuggling import has_bare_line_ending
from scattergate.model import Envelope, Session


def ctx(rcpt: str, *, trusted: bool = False) -> CheckContext:
    session = Session("192.0.2.1", trusted=trusted)
    return CheckContext(session, Envelope(parse_path("<a@sender.example>")), parse_path(rcpt))


def keys(findings) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.key for f in findings]


relay = RelayCheck(["example.org"], outbound_route=True)


@pytest.mark.parametrize(
    "rcpt, expected",
    [
        ("<user@example.org>", []),
        ("<user@EXAMPLE.ORG>", []),
        ("<user@other.example>", ["relay.denied"]),
        ("<user%other.example@example.org>", ["relay.routing"]),
        ("<other.example!user@example.org>", ["relay.routing"]),
        ('<"user@other.example"@example.org>', ["relay.routing"]),
        ("<@example.org:user@other.example>", ["relay.routing"]),
        ("<@example.org:user@example.org>", ["relay.routing"]),
        ("<user@[192.0.2.7]>", ["relay.ip_literal"]),
    ],
)
def test_untrusted_clients_cannot_relay(rcpt: str, expected: list[str]) -> None:
    assert keys(relay(ctx(rcpt))) == expected


def test_trusted_clients_relay_outbound_only_with_a_route() -> None:
    assert keys(relay(ctx("<user@other.example>", trusted=True))) == ["relay.outbound"]
    no_route = RelayCheck(["example.org"], outbound_route=False)
    assert keys(no_route(ctx("<user@other.example>", trusted=True))) == ["relay.no_route"]


def test_recipient_table(tmp_path: Path) -> None:
    path = tmp_path / "rcpts"
    path.write_text("# staff\nAlice@Example.org\n<bob@example.org>\nhostmaster   # every domain\n\n")
    table = RecipientTable(str(path))
    assert "alice@example.org" in table
    assert "ALICE@example.org" in table
    assert "alice+news@example.org" in table  # sub-address of a known user
    assert "bob@example.org" in table
    assert "hostmaster@example.net" in table
    assert "carol@example.org" not in table
    assert "postmaster@example.org" not in table  # the file replaces the defaults
    assert table.domains == {"example.org"}


def test_default_table_knows_the_role_addresses_only() -> None:
    table = RecipientTable(None)
    assert "postmaster@localhost" in table and "abuse@localhost" in table
    assert "root@localhost" not in table


def test_recipient_check_ignores_other_domains(tmp_path: Path) -> None:
    check = RecipientCheck(RecipientTable(None), lambda d: d == "example.org")
    assert keys(check(ctx("<nobody@example.org>"))) == ["recipient.unknown"]
    assert keys(check(ctx("<postmaster@example.org>"))) == []
    assert keys(check(ctx("<nobody@other.example>", trusted=True))) == []


def test_recipient_limit() -> None:
    context = ctx("<user@example.org>")
    assert context.envelope is not None
    limit = RecipientLimit(2)
    assert keys(limit(context)) == []
    context.envelope.recipients.extend([parse_path("<a@example.org>"), parse_path("<b@example.org>")])
    assert keys(limit(context)) == ["limits.too_many_recipients"]


@pytest.mark.parametrize(
    "data, bare",
    [
        (b"Subject: x\r\n\r\nbody\r\n", False),
        (b"", False),
        (b"line\n", True),
        (b"line\r", True),
        (b"a\r\n.\nMAIL FROM:<x@y>\r\n", True),
        (b"a\r\n.\r\r\n", True),
        (b"a\n.\r\n", True),
        (b"a\r\r\n", True),
    ],
)
def test_bare_line_endings(data: bytes, bare: bool) -> None:
    assert has_bare_line_ending(data) is bare
