"""The sans-IO SMTP server: bytes in, events and replies out — no sockets, no clock."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from scattergate.frontends import smtp_protocol as sp
from scattergate.frontends.smtp_protocol import ServerProtocol, Settings


def machine(**overrides: object) -> ServerProtocol:
    options: dict[str, object] = {"hostname": "mx.test.example", "max_message_size": 10_000}
    options.update(overrides)
    return ServerProtocol(Settings(**options))  # type: ignore[arg-type]


def drive(m: ServerProtocol, data: bytes, answers: dict[type, tuple[str, bool]] | None = None) -> tuple[list[object], list[str]]:
    """Feed `data`, answer every event that needs it (default: accept), collect events and reply lines."""
    answers = answers or {}
    m.receive_data(data)
    events: list[object] = []
    while True:
        event = m.next_event()
        if event is sp.NEED_DATA:
            break
        if event is sp.PAUSED:
            raise AssertionError("paused without an event to answer")
        events.append(event)
        if isinstance(event, (sp.MailFrom, sp.RcptTo, sp.Message, sp.MessageRefused, sp.Authenticate)):
            reply, accepted = answers.get(type(event), ("250 2.0.0 fine", True))
            m.answer(reply, accepted)
        if isinstance(event, sp.StartTls):
            break
    return events, m.take_output().decode().split("\r\n")[:-1]


def codes(lines: list[str]) -> list[int]:
    return [int(line[:3]) for line in lines if line[3:4] == " "]


def greeted(**overrides: object) -> ServerProtocol:
    m = machine(**overrides)
    drive(m, b"EHLO client.example\r\n")
    return m


def test_a_whole_transaction_pipelined_in_one_segment() -> None:
    m = greeted()
    events, lines = drive(m, b"MAIL FROM:<a@sender.example> BODY=8BITMIME\r\nRCPT TO:<u@example.org> NOTIFY=NEVER\r\n"
                             b"DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    kinds = [type(e) for e in events]
    assert kinds == [sp.MailFrom, sp.RcptTo, sp.DataStarted, sp.Message, sp.Quit]
    mail, rcpt, _, message, _ = events
    assert str(mail.sender) == "a@sender.example" and mail.options == ("BODY=8BITMIME",)  # type: ignore[attr-defined]
    assert rcpt.notify == frozenset({"NEVER"})  # type: ignore[attr-defined]
    assert message.content == b"Subject: x\r\n\r\n.dot\r\n"  # type: ignore[attr-defined]
    assert codes(lines) == [250, 250, 354, 250, 221]
    assert m.mode is sp.Mode.CLOSED


def test_a_pipelined_command_waits_for_the_answer_to_the_one_before() -> None:
    m = greeted()
    m.receive_data(b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<u@example.org>\r\n")
    assert isinstance(m.next_event(), sp.MailFrom)
    assert m.next_event() is sp.PAUSED  # RCPT is not read before MAIL is answered
    m.answer("550 5.7.1 no", False)
    assert m.next_event() is sp.NEED_DATA  # ... and refused by sequencing once it is
    assert m.take_output() == b"550 5.7.1 no\r\n503 5.5.1 Error: need MAIL command\r\n"


@pytest.mark.parametrize(
    "commands, refusal",
    [
        (b"MAIL FROM:<a@b.example>\r\n", sp.NEED_HELO),
        (b"EHLO c\r\nRCPT TO:<a@b.example>\r\n", sp.NEED_MAIL),
        (b"EHLO c\r\nDATA\r\n", sp.NEED_MAIL),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nDATA\r\n", sp.NEED_RCPT),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n", sp.NESTED_MAIL),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<a@b.example>\r\n", sp.NEED_MAIL),
        (b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nEHLO c\r\nRCPT TO:<a@b.example>\r\n", sp.NEED_MAIL),
    ],
)
def test_sequencing_errors_come_from_the_table(commands: bytes, refusal: str) -> None:
    _, lines = drive(machine(), commands)
    assert lines[-1] == refusal


def test_the_table_covers_every_sequenced_command_in_every_phase() -> None:
    for verb in ("HELO", "EHLO", "RSET", "MAIL", "RCPT", "DATA", "AUTH"):
        for phase in sp.Phase:
            assert (verb, phase) in sp.SEQUENCE


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"NOOP\n", sp.BARE_LINE),
        (b"NOOP\r\r\n", sp.BARE_LINE),
        (b"NO\x00OP\r\n", sp.NUL_IN_COMMAND),
        (b"\r\n", sp.BAD_SYNTAX),
        (b"N\xffOP\r\n", sp.BAD_UTF8_LINE),
        (b"MAIL FROM:<\xff@b.example>\r\n", sp.BAD_UTF8_ARGUMENT),
        ("MAIL FROM:<\u00fc@b.example>\r\n".encode(), sp.NEED_SMTPUTF8),
        (b"XYZZY secret\r\n", sp.UNKNOWN_COMMAND),
        (b"NOOP " + b"x" * 600 + b"\r\n", sp.LINE_TOO_LONG),
        (b"NOOP " + b"x" * 50_000 + b"\r\n", sp.LINE_TOO_LONG),
        (b"MAIL FROM:<a@b.example> SIZE=20000\r\n", sp.MESSAGE_TOO_BIG),
        (b"MAIL FROM:<a@b.example> FOO=BAR\r\n", sp.MAIL_PARAMETERS),
        (b"MAIL FROM:a@b@c\r\n", sp.MALFORMED_ADDRESS),
        (b"EXPN list\r\n", sp.NO_EXPN),
    ],
)
def test_malformed_command_lines(line: bytes, reply: str) -> None:
    m = greeted()
    _, lines = drive(m, line)
    assert lines == [reply]
    _, lines = drive(m, b"NOOP\r\n")  # and the session goes on
    assert lines == [sp.OK]


def test_an_overlong_command_line_is_dropped_as_it_arrives() -> None:
    m = greeted()
    for _ in range(100):
        m.receive_data(b"x" * 10_000)
        assert m.next_event() is sp.NEED_DATA
        assert m.buffered <= sp.AUTH_LINE_LIMIT + 10_000  # memory stays bounded
    _, lines = drive(m, b"\r\nNOOP\r\n")
    assert lines == [sp.LINE_TOO_LONG, sp.OK]


def test_an_unknown_command_event_carries_only_its_length() -> None:
    events, _ = drive(greeted(), b"AGFsaWNlAHNlY3JldA==\r\n")
    assert events == [sp.Unrecognised(len(b"AGFsaWNlAHNlY3JldA==\r\n"))]


def transaction(m: ServerProtocol) -> None:
    drive(m, b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<u@example.org>\r\nDATA\r\n")


@pytest.mark.parametrize("length, refused", [(998, False), (999, True), (1200, True), (100_000, True)])
def test_a_text_line_over_998_characters_is_refused(length: int, refused: bool) -> None:
    # RFC 5321 §4.5.3.1.6 / RFC 5322 §2.1.1: 998 characters and CRLF at most.
    m = greeted(max_message_size=0)
    transaction(m)
    events, _ = drive(m, b"Subject: x\r\n\r\n" + b"y" * length + b"\r\n.\r\n")
    assert (events[-1] == sp.MessageRefused(sp.DataOutcome.TOO_LONG)) is refused
    if not refused:
        assert events[-1] == sp.Message(b"Subject: x\r\n\r\n" + b"y" * 998 + b"\r\n")


def test_too_much_data_is_refused_after_the_final_dot() -> None:
    m = greeted(max_message_size=1000)
    transaction(m)
    events, _ = drive(m, (b"z" * 98 + b"\r\n") * 11 + b".\r\nNOOP\r\n")
    assert isinstance(events[0], sp.MessageRefused) and events[0].outcome is sp.DataOutcome.TOO_MUCH
    assert m.phase is sp.Phase.GREETED


@pytest.mark.parametrize("separator", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\n.\r"])
def test_only_crlf_dot_crlf_ends_the_data(separator: bytes) -> None:
    # Smuggling: any other spelling of the end is content (refused later by checks/smuggling.py).
    m = greeted()
    transaction(m)
    smuggled = b"first" + separator + b"MAIL FROM:<x@y.example>\r\n"
    events, _ = drive(m, smuggled + b".\r\n")
    # A line that starts with a dot (after a real CRLF) loses it, as RFC 5321 §4.5.2 says.
    assert events == [sp.Message(smuggled.replace(b"\r\n.", b"\r\n"))]


@hsettings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=1100).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8))
def test_the_data_reader_gives_the_same_whatever_the_chunking(lines: list[bytes], cuts: list[int]) -> None:
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\nNOOP\r\n"
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    m = greeted(max_message_size=0)
    transaction(m)
    events: list[object] = []
    for a, b in zip(points, points[1:]):
        events += drive(m, wire[a:b])[0]
    expected = (sp.MessageRefused(sp.DataOutcome.TOO_LONG) if any(len(l) > 998 for l in lines)
                else sp.Message(b"".join(l + b"\r\n" for l in lines)))
    assert events == [expected]
    assert m.phase is sp.Phase.GREETED


def test_starttls_drops_what_was_pipelined_in_clear_text() -> None:
    # RFC 3207 §4.2, CVE-2011-0411: a command injected behind STARTTLS must never run.
    m = greeted(tls_available=True, auth_available=True)
    events, lines = drive(m, b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
    assert events == [sp.StartTls()] and lines == [sp.READY_FOR_TLS]
    m.receive_data(b"RSET\r\n")  # still clear text: ignored
    assert m.next_event() is sp.PAUSED
    m.tls_started()
    assert m.phase is sp.Phase.FRESH and m.next_event() is sp.NEED_DATA
    _, lines = drive(m, b"EHLO c\r\n")
    assert "250-AUTH LOGIN PLAIN" in lines and "250-STARTTLS" not in lines


def test_auth_plain_and_login_give_the_credentials() -> None:
    plain = base64.b64encode(b"\x00alice\x00s3cret").decode()
    for exchange in (f"AUTH PLAIN {plain}\r\n".encode(), b"AUTH PLAIN\r\n" + plain.encode() + b"\r\n",
                     b"AUTH LOGIN\r\n" + base64.b64encode(b"alice") + b"\r\n" + base64.b64encode(b"s3cret") + b"\r\n"):
        m = machine(tls_available=True, auth_available=True)
        m.receive_data(b"STARTTLS\r\n")
        m.next_event()
        m.tls_started()
        events, lines = drive(m, b"EHLO c\r\n" + exchange, {sp.Authenticate: (sp.AUTH_OK, True)})
        auth = events[-1]
        assert isinstance(auth, sp.Authenticate) and (auth.user, auth.password) == (b"alice", b"s3cret")
        assert "s3cret" not in repr(auth)
        assert lines[-1] == sp.AUTH_OK and m.authenticated


@pytest.mark.parametrize(
    "settings, reply",
    [({}, sp.NO_AUTH), ({"auth_available": True, "tls_available": True}, sp.AUTH_NEEDS_TLS)],
)
def test_auth_refused_without_tls_or_users(settings: dict[str, object], reply: str) -> None:
    m = greeted(**settings)
    events, lines = drive(m, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    assert lines == [reply] and events == [] and m.auth_attempted


def test_tls_required_refuses_mail_before_starttls() -> None:
    m = greeted(tls_available=True, tls_required=True)
    _, lines = drive(m, b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert lines == [sp.NEED_TLS, sp.OK]


def test_max_commands_stops_reading() -> None:
    m = machine(max_commands=3)
    events, lines = drive(m, b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert events == [sp.TooManyCommands()] and lines == [sp.OK] * 3
    assert m.mode is sp.Mode.CLOSED


def test_an_accepted_message_resets_the_command_count() -> None:
    m = machine(max_commands=5)
    drive(m, b"EHLO c\r\n")
    transaction(m)
    events, _ = drive(m, b"x\r\n.\r\nNOOP\r\n")
    assert m.commands == 1 and not any(isinstance(e, sp.TooManyCommands) for e in events)


def test_eof_in_data_is_reported() -> None:
    m = greeted()
    transaction(m)
    m.receive_data(b"half a message")
    m.receive_data(b"")
    assert m.next_event() == sp.Closed(in_data=True)
