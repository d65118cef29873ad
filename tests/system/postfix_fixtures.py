"""Shared pieces for the real-Postfix tests: our milter and policy services in a thread, and a
private Postfix with several smtpd listeners (one per integration), so one Postfix serves a
whole test module."""

from __future__ import annotations

import asyncio
import email
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from scattergate.config import Config
from scattergate.frontends import milter, policy
from scattergate.pipeline import Gateway
from scattergate.serve import start_stream_server
from scattergate.state.sqlite import SqliteStore
from tests.support.postfix import PrivatePostfix


def world_dir(prefix: str) -> Path:
    """A temp dir the 'postfix' user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Services:
    """A Gateway with our milter and policy servers on loopback, in a background event loop."""

    def __init__(self, config: Config) -> None:
        milter.for_postfix(config)
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.store = SqliteStore(config.data_dir / "state.sqlite3")
        self.gateway: Gateway | None = None
        self.policy: policy.PolicyService | None = None
        self.milter_port = 0
        self.policy_port = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> "Services":
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.gateway = Gateway(self.config, self.store)
        await self.gateway.start()
        self.policy = policy.PolicyService(self.gateway, budget=self.config.postfix.policy_budget,
                                           timeout_action=self.config.postfix.policy_timeout_action)
        m = await start_stream_server("inet:127.0.0.1:0", milter.handler(self.gateway))
        p = await start_stream_server("inet:127.0.0.1:0", policy.handler(self.policy))
        self._servers = [m, p]
        self.milter_port = m.sockets[0].getsockname()[1]
        self.policy_port = p.sockets[0].getsockname()[1]

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            if self.gateway is not None:
                await self.gateway.stop()
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        if self._thread.is_alive():
            self.call(shutdown())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.store.close()


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
