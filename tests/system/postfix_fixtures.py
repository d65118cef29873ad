"""Shared pieces for the real-Postfix tests: our milter and policy services in a thread, and a
private Postfix with several smtpd listeners (one per integration), so one Postfix serves a
whole test module."""

from __future__ import annotations

import asyncio
import email
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from scattergate.config import Config
from scattergate.frontends import milter, policy
from scattergate.serve import start_stream_server
from tests.support.gateway import ServiceThread
from tests.support.postfix import PrivatePostfix


def world_dir(prefix: str) -> Path:
    """A temp dir the 'postfix' user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Services(ServiceThread):
    """A Gateway with our milter and policy servers on loopback, in a background event loop."""

    behind_postfix = True

    def __init__(self, config: Config) -> None:
        milter.for_postfix(config)
        super().__init__(config)
        self.policy: policy.PolicyService | None = None
        self.milter_port = 0
        self.policy_port = 0

    async def open_servers(self) -> list[asyncio.AbstractServer]:
        self.policy = policy.PolicyService(self.gateway, budget=self.config.postfix.policy_budget,
                                           timeout_action=self.config.postfix.policy_timeout_action)
        m = await start_stream_server("inet:127.0.0.1:0", milter.handler(self.gateway))
        p = await start_stream_server("inet:127.0.0.1:0", policy.handler(self.policy))
        self.milter_port = m.sockets[0].getsockname()[1]
        self.policy_port = p.sockets[0].getsockname()[1]
        return [m, p]


class ListenerPostfix(PrivatePostfix):
    """PrivatePostfix with extra smtpd listeners: {port: {parameter: value}} as master.cf -o."""

    def __init__(self, directory: Path, *, port: int, settings: dict[str, str],
                 listeners: dict[int, dict[str, str]]) -> None:
        super().__init__(directory, port=port, settings=settings)
        self.listeners = listeners

    def write_config(self) -> None:
        super().write_config()
        lines = []
        for port, overrides in self.listeners.items():
            options = "".join(f"\n  -o {{ {k} = {v} }}" for k, v in overrides.items())
            lines.append(f"127.0.0.1:{port} inet n - n - - smtpd{options}\n")
        with open(self.config_dir / "master.cf", "a") as handle:
            handle.writelines(lines)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll for something another process does (Postfix delivering); not a timing assumption."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sink_dump_with(directory: Path, token: str) -> tuple[dict[str, list[str]], email.message.Message] | None:
    """The smtp-sink dump whose message contains `token`: (its X- envelope lines, the message)."""
    if not directory.exists():
        return None
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if token.encode() not in data:
            continue
        envelope: dict[str, list[str]] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            match = re.match(r"(X-[A-Za-z-]+): ?(.*)", line)
            if not match:
                break
            envelope.setdefault(match.group(1), []).append(match.group(2))
        return envelope, email.message_from_bytes(data)
    return None
