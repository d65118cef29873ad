"""The commands Postfix talks to, as processes: `scattergate milter` and `scattergate policy`
on unix sockets, answering their protocols, stopping cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.frontends import milter_codec as mc
from scattergate.frontends import policy_codec as pc
from tests.support.sink import free_port
from tests.system.postfix_fixtures import world_dir


@pytest.fixture
def root() -> Iterator[Path]:
    path = world_dir("sg-cli-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(root: Path, command: str, sock: Path, *extra: str) -> subprocess.Popen[bytes]:
    mode = () if "--socket-mode" in extra else ("--socket-mode", "666")
    process = subprocess.Popen(
        [sys.executable, "-m", "scattergate", command, "--listen", f"unix:{sock}", *mode,
         "--domain", "example.org", "--data-dir", str(root / command), "--log-level", "warning",
         "--http-listen", "", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # readiness poll: the socket accepts connections
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())  # type: ignore[union-attr]
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(sock))
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{command} did not listen")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(30)


def _exchange(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(str(path))
        client.sendall(data)
        return client.recv(65536)


def test_policy_command(root: Path) -> None:
    sock = root / "policy.sock"
    process = _start(root, "policy", sock)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
        # A bounce to a forged BATV tag (unknown recipients are Postfix's to refuse).
        request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": "192.0.2.7",
                   "sender": "", "recipient": "prvs=0999abcdef=alice@example.org"}
        assert _exchange(sock, pc.encode_request(request)).startswith(b"action=550 5.7.1 ")
    finally:
        assert _stop(process) == 0


def test_milter_command(root: Path) -> None:
    sock = root / "milter.sock"
    process = _start(root, "milter", sock)
    try:
        code, payload = mc.decode_response(_exchange(sock, mc.encode_command(mc.OptNeg(6, 0x1FF, 0x1FFFFF))))
        assert code == "O" and payload[:4] == b"\0\0\0\x06"
    finally:
        assert _stop(process) == 0


@pytest.mark.parametrize("command", ["milter", "policy"])
def test_postfix_side_services_serve_metrics(root: Path, command: str) -> None:
    """An admin running only the milter or the policy service still gets /metrics."""
    port = free_port()
    sock = root / f"{command}.sock"
    process = _start(root, command, sock, "--http-listen", f"127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:  # readiness poll: the HTTP listener starts right after the gateway
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    body = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert "scattergate_sessions" in body or "scattergate_decisions" in body
    finally:
        assert _stop(process) == 0


def test_unix_socket_directory_group_and_mode_come_from_configuration(root: Path) -> None:
    """The socket keeps Postfix's access across restarts: no chgrp by hand to lose."""
    import grp

    sock = root / "missing" / "dir" / "milter.sock"
    for _ in range(2):  # the second start replaces the first one's socket
        process = _start(root, "milter", sock, "--socket-group", "postfix", "--socket-mode", "660")
        try:
            info = os.stat(sock)
            assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o660, grp.getgrnam("postfix").gr_gid)
        finally:
            assert _stop(process) == 0


def test_an_impossible_socket_path_is_named_without_a_traceback(root: Path) -> None:
    (root / "file").write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-m", "scattergate", "milter", "--listen", f"unix:{root}/file/milter.sock",
         "--domain", "example.org", "--data-dir", str(root / "data"), "--http-listen", ""],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{root}/file" in result.stderr and "Traceback" not in result.stderr, result.stderr
