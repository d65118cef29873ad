"""Slow and greedy clients against the real gateway: deadlines, command caps, floods.

The server's deadlines are small here (half a second); the clients pace themselves by waiting
for the server (a socket read with a short timeout), never by sleeping, and every loop is
bounded: a server that never hangs up fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
from typing import Callable

import pytest

from scattergate.config import Config
from tests.support.dialogue import Dialogue
from tests.support.gateway import GatewayThread

MESSAGE = b"From: a@sender.example\r\nTo: postmaster@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
PACE = 0.1  # seconds between dribbled bytes: well inside every deadline below
TIMEOUT_REPLY = "4.4.2 mx.test.example Error: timeout exceeded"


@pytest.fixture
def slow_gw(gateway, make_config) -> Callable[..., GatewayThread]:  # type: ignore[no-untyped-def]
    def start(**server: object) -> GatewayThread:
        settings: dict[str, object] = {"command_timeout": 0.5, "data_timeout": 0.5, "max_connections_per_client": 50}
        settings.update(server)
        config: Config = make_config(receive={"domains": ["example.org"]}, server=settings)
        return gateway(config)

    return start


def dribble_until_answered(sock: socket.socket, chunks: Callable[[int], bytes], *, rounds: int = 100) -> bytes:
    """Send chunk after chunk, waiting up to PACE seconds after each for the server to say
    something; return what it said (b"" if it only closed). After `rounds` chunks, wait a
    last few seconds: a server that still says nothing fails the test (socket.timeout)."""
    sock.settimeout(PACE)
    for n in range(rounds):
        try:
            sock.sendall(chunks(n))
        except (BrokenPipeError, ConnectionResetError):
            break  # already closed: read what came before
        try:
            return sock.recv(4096)
        except socket.timeout:
            continue
    sock.settimeout(5)
    return sock.recv(4096)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def open_session(gw: GatewayThread, *, data: bool = False) -> Dialogue:
    d = Dialogue(gw.address, timeout=5)
    assert d.command("EHLO slow.example")[0] == 250
    if data:
        assert d.command("MAIL FROM:<a@sender.example>")[0] == 250
        assert d.command("RCPT TO:<postmaster@example.org>")[0] == 250
        assert d.command("DATA")[0] == 354
    return d


def test_a_command_line_dribbled_byte_by_byte_is_cut_off_with_421(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw()
    with open_session(gw) as d:
        # One byte every 0.1 s: an idle timer would be reset forever; the line deadline is not.
        said = dribble_until_answered(d.sock, lambda n: b"NOOP"[n % 4:n % 4 + 1])
        assert said.startswith(b"421 " + TIMEOUT_REPLY.encode() + b"\r\n"), said
        assert read_to_close(d.sock) == b""
    gw.flush()
    counters = gw.store.counters()
    assert counters["findings.session.timeout"] == 1
    assert counters["decisions.connect.tempfail"] == 1


def test_an_endless_overlong_line_is_cut_off_too(slow_gw) -> None:  # type: ignore[no-untyped-def]
    # Chunks beyond the reader's 1001-byte limit make aiosmtpd read on in pieces; the deadline
    # of the line must not restart with each piece.
    gw = slow_gw()
    with open_session(gw) as d:
        said = dribble_until_answered(d.sock, lambda n: b"x" * 2000)
        assert said.startswith(b"421 " + TIMEOUT_REPLY.encode()), said


def test_data_dribbled_byte_by_byte_is_cut_off_with_421(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw()
    with open_session(gw, data=True) as d:
        said = dribble_until_answered(d.sock, lambda n: b"x" if n % 50 else b"\r\n")
        assert said.startswith(b"421 " + TIMEOUT_REPLY.encode()), said
        assert read_to_close(d.sock) == b""
    gw.flush()
    counters = gw.store.counters()
    assert counters["findings.session.timeout"] == 1 and counters["decisions.data.tempfail"] == 1
    assert not list(gw.config.maildir.glob("**/new/*"))


def test_data_faster_than_the_minimum_rate_may_take_longer_than_data_timeout(slow_gw) -> None:  # type: ignore[no-untyped-def]
    # 1,000 bytes every 0.1 s (~10 kB/s) against a minimum of 1,000 B/s: each chunk buys a
    # second, so 20 chunks (2 s, four times data_timeout) make one message.
    gw = slow_gw(data_min_rate=1000)
    with open_session(gw, data=True) as d:
        d.send(MESSAGE)
        said = dribble_until_answered(d.sock, lambda n: b"y" * 998 + b"\r\n" if n < 20 else b".\r\n", rounds=21)
        assert said.startswith(b"250 2.0.0"), said
        assert d.command("NOOP")[0] == 250  # and the session goes on


def test_a_stalled_client_is_cut_off_while_waiting_for_its_command(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw()
    with open_session(gw) as d:
        d.sock.settimeout(10)  # bounded: the server must speak within it
        code, text = d.reply()
        assert (code, text) == (421, TIMEOUT_REPLY)
        assert d.closed()


def test_a_noop_loop_is_cut_off_after_max_commands(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=10.0, max_commands=20)
    with Dialogue(gw.address, timeout=5) as d:
        for _ in range(20):  # EHLO, RSET and NOOPs: all count
            assert d.command("NOOP")[0] == 250
        code, text = d.command("NOOP")
        assert (code, text) == (421, "4.7.0 mx.test.example Error: too many commands")
        assert d.closed()
    gw.flush()
    assert gw.store.counters()["findings.session.too_many_commands"] == 1


def test_pipelined_commands_after_the_limit_are_never_run(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=10.0, max_commands=3)
    with Dialogue(gw.address, timeout=5) as d:
        d.send(b"EHLO a.example\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<postmaster@example.org>\r\n"
               b"DATA\r\n" + MESSAGE + b".\r\n")
        replies = read_to_close(d.sock).decode()
        assert replies.splitlines()[-1] == "421 4.7.0 mx.test.example Error: too many commands"
        assert "354" not in replies
    assert not list(gw.config.maildir.glob("**/new/*"))


def test_delivering_mail_resets_the_command_count(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=10.0, max_commands=10)
    with Dialogue(gw.address, timeout=5) as d:
        assert d.command("EHLO a.example")[0] == 250
        # 25 commands in all, never more than 8 between two accepted messages.
        for _ in range(3):
            assert d.command("MAIL FROM:<a@sender.example>")[0] == 250
            assert d.command("RCPT TO:<postmaster@example.org>")[0] == 250
            assert d.command("DATA")[0] == 354
            d.send(MESSAGE + b".\r\n")
            assert d.reply()[0] == 250
            for _ in range(4):
                assert d.command("NOOP")[0] == 250


def test_a_session_ends_at_max_session_time_between_commands(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=10.0, max_session_time=1.0)
    with socket.create_connection(gw.address, timeout=5) as sock:
        assert sock.recv(200).startswith(b"220 ")
        # A well-behaved client, one NOOP every 0.1 s, each answered: the session still ends.
        for _ in range(100):
            sock.sendall(b"NOOP\r\n")
            said = sock.recv(200)
            if said != b"250 2.0.0 OK\r\n":
                break
            sock.settimeout(PACE)
            try:
                said = sock.recv(200)  # the server speaks unasked only to hang up
                break
            except socket.timeout:
                sock.settimeout(5)
        assert said == b"421 " + TIMEOUT_REPLY.encode() + b"\r\n", said
        assert read_to_close(sock) == b""


# -- floods ---------------------------------------------------------------------------------


def flood(gw: GatewayThread, count: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """Open `count` connections at once; return (those greeted 220, those refused 421)."""
    socks = [socket.create_connection(gw.address, timeout=10) for _ in range(count)]
    greeted, refused = [], []
    for sock in socks:
        banner = sock.recv(200)
        if banner.startswith(b"220 "):
            greeted.append(sock)
        else:
            assert banner.startswith(b"421 4.7.0 "), banner
            assert read_to_close(sock) == b""  # and closed by the server
            refused.append(sock)
    return greeted, refused


def test_a_flood_from_one_client_gets_exactly_the_excess_refused(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=30.0, max_connections_per_client=20)
    greeted, refused = flood(gw, 200)
    try:
        assert (len(greeted), len(refused)) == (20, 180)
        # The greeted ones are real sessions, and the gateway serves them under the flood.
        for sock in greeted[:3]:
            sock.sendall(b"NOOP\r\n")
            assert sock.recv(100) == b"250 2.0.0 OK\r\n"
    finally:
        for sock in greeted + refused:
            sock.close()
    # Every session ends (the gateway counts them down to zero), and then a client gets in.
    assert gw.call(gw.gateway.wait_idle(10))
    assert gw.gateway.active_sessions == 0
    with Dialogue(gw.address, timeout=5) as d:
        assert d.banner[0] == 220 and d.command("NOOP")[0] == 250
    gw.flush()
    counters = gw.store.counters()
    assert counters["findings.connection.too_many"] == 180
    assert counters["sessions"] == 201


def test_the_global_connection_limit_holds_under_a_flood(slow_gw) -> None:  # type: ignore[no-untyped-def]
    gw = slow_gw(command_timeout=30.0, max_connections=30, max_connections_per_client=1000)
    greeted, refused = flood(gw, 100)
    try:
        assert (len(greeted), len(refused)) == (30, 70)
    finally:
        for sock in greeted + refused:
            sock.close()
    assert gw.call(gw.gateway.wait_idle(10))
    with Dialogue(gw.address, timeout=5) as d:
        assert d.banner[0] == 220


def test_a_flood_of_slow_clients_is_cleared_by_the_deadlines(slow_gw) -> None:  # type: ignore[no-untyped-def]
    # Twenty connections that never speak: the deadline frees every slot without help.
    gw = slow_gw(max_connections_per_client=20)
    greeted, refused = flood(gw, 20)
    try:
        assert len(greeted) == 20
        for sock in greeted:
            assert read_to_close(sock).startswith(b"421 4.4.2 ")
    finally:
        for sock in greeted:
            sock.close()
    assert gw.call(gw.gateway.wait_idle(10))
    with Dialogue(gw.address, timeout=5) as d:
        assert d.banner[0] == 220
