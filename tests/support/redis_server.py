"""A real redis-server on loopback for the tests: started in the foreground, stopped by pid.

No persistence by default (`--save '' --appendonly no`); `save()` writes a snapshot on demand
into the server's own directory, which a restart on the same port loads again — so a test can
tell "Redis restarted with its data" from "Redis came back empty".
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import require_binary
from tests.support.sink import free_port

READY = "Ready to accept connections"


class RedisServer:
    def __init__(self, binary: str, directory: Path, *, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--daemonize", "no",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory), "--logfile", "",
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._wait_for(READY)
        return self

    def _wait_for(self, marker: str) -> None:
        # Readiness from the server's own log line, not a timing guess.
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if marker in line:
                # Keep reading its log, so a full pipe can never block the server.
                threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
                return
        raise RuntimeError(f"redis-server exited with {self.process.wait()}:\n{''.join(self.log[-20:])}")

    def _drain(self, stream) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            self.log.append(line)

    def save(self) -> None:
        """Snapshot the data now, so that a restart keeps it."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.save()

    def pause(self) -> None:
        """A hung Redis: connections are accepted by the kernel, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def kill(self) -> None:
        """kill -9: a primary that dies without a word (what Sentinel fails over from)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port and directory."""
        self.stop()
        self.start()


class RedisSentinel(RedisServer):
    """`redis-server --sentinel` watching one primary as service `name` (quorum 1).

    `options`: more `sentinel <option> <name> <value>` lines, e.g. {"down-after-milliseconds": 500}
    (Sentinel's defaults, 30 s and 3 min, are for production, not for a failover test)."""

    def __init__(self, binary: str, directory: Path, primary_port: int, name: str = "scattergate",
                 options: dict[str, int] | None = None) -> None:
        super().__init__(binary, directory)
        self.primary_port = primary_port
        self.name = name
        self.options = options or {}

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.name}/0"

    def start(self) -> "RedisSentinel":
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndaemonize no\nlogfile \"\"\ndir {self.directory}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.primary_port} 1\n"
            + "".join(f"sentinel {key} {self.name} {value}\n" for key, value in self.options.items())
        )
        self.process = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._wait_for("+monitor master")
        return self


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start real redis-servers (skipped locally without the binary, failed under CI=true)."""
    started: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = RedisServer(require_binary("redis-server"), tmp_path / f"redis{len(started)}", extra=extra)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[Callable[[RedisServer], RedisSentinel]]:
    started: list[RedisSentinel] = []

    def start(primary: RedisServer, **options: int) -> RedisSentinel:
        """A sentinel for `primary`; options as keyword arguments, e.g. down_after_milliseconds=500."""
        sentinel = RedisSentinel(require_binary("redis-server"), tmp_path / f"sentinel{len(started)}", primary.port,
                                 options={k.replace("_", "-"): v for k, v in options.items()})
        started.append(sentinel)
        return sentinel.start()

    yield start
    for sentinel in started:
        sentinel.stop()
