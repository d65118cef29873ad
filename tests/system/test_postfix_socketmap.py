"""Postfix's own socketmap client (postmap -q) against `scattergate srs-socketmap`'s handler."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from typing import Iterator

import pytest

from scattergate.frontends.socketmap import Maps, handler
from scattergate.rewrite.keys import SrsSecrets
from scattergate.serve import start_stream_server
from tests.conftest import require_binary

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def socketmap_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    secrets = SrsSecrets.of(["test-secret"])
    start = start_stream_server("inet:127.0.0.1:0", handler(Maps(None, "fwd.example.org", secrets, ["example.org"])))
    server = asyncio.run_coroutine_threadsafe(start, loop).result(10)
    yield server.sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _postmap(port: int, name: str, key: str) -> subprocess.CompletedProcess[str]:
    postmap = require_binary("postmap")
    return subprocess.run([postmap, "-q", key, f"socketmap:inet:127.0.0.1:{port}:{name}"],
                          capture_output=True, text=True, timeout=30)


def test_postfix_rewrites_and_reverses_through_the_socketmap(socketmap_port: int) -> None:
    forward = _postmap(socketmap_port, "forward", "user@example.net")
    assert forward.returncode == 0 and forward.stdout.startswith("SRS0="), forward
    address = forward.stdout.strip()
    assert address.endswith("@fwd.example.org")
    back = _postmap(socketmap_port, "reverse", address)
    assert (back.returncode, back.stdout.strip()) == (0, "user@example.net")
    # Local senders are not rewritten: NOTFOUND, so Postfix keeps the address.
    assert _postmap(socketmap_port, "forward", "me@example.org").returncode == 1
