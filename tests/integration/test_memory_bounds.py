"""Hostile sizes cost bounded memory: a gateway process refusing a message far over SIZE, or a
header section far over its limit, does not buffer what it refuses (its peak RSS, VmHWM, stays
near where it was)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.integration.test_cli_serve import start, stop
from tests.support.sink import free_port

MiB = 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def send_message(port: int, chunks: int, line: bytes) -> bytes:
    """One transaction whose DATA is `chunks` MiB of `line`s; the reply to the final dot."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"EHLO client.example.net\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<a@example.net>\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"RCPT TO:<postmaster@example.org>\r\n")
        assert reader.readline().startswith(b"250")
        sock.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        block = line * (MiB // len(line))
        for _ in range(chunks):
            sock.sendall(block)
        sock.sendall(b"\r\n.\r\n")
        return reader.readline()


def test_oversized_messages_and_header_floods_cost_bounded_memory(tmp_path: Path) -> None:
    (tmp_path / "sg.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{free_port()}"\nmax_message_size = {4 * MiB}\n'
        f'max_header_size = {256 * 1024}\n[receive]\ndomains = ["example.org"]\n'
        '[http]\nlisten = ""\n'
    )
    process, port = start(["--config", "sg.toml"], tmp_path)
    try:
        assert send_message(port, 1, b"Subject: warm-up\r\n\r\n" + b"x" * 78 + b"\r\n").startswith(b"250")
        before = peak_rss(process.pid)
        # 64 MiB against a 4 MiB SIZE limit: refused, and never held.
        assert send_message(port, 64, b"y" * 998 + b"\r\n").startswith(b"552")
        # 3 MiB of header fields (under SIZE, over max_header_size): refused as a whole.
        reply = send_message(port, 3, b"X-Flood: " + b"z" * 60 + b"\r\n")
        assert reply.startswith(b"552 5.3.4")
        grown = peak_rss(process.pid) - before
        # The header flood is held once (it is under SIZE) plus its parse; the 64 MiB never is.
        assert grown < 40 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    finally:
        assert stop(process) == 0
