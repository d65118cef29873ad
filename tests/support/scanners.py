"""Real content scanners on loopback: clamd, spamd and rspamd, plus a misbehaving fake.

Shared by the system-test fixtures (tests/system/conftest.py) and the benchmarks
(bench/scan_throughput.py). Each daemon runs with its configuration under a directory we are
given, listens on loopback (clamd also on a unix socket), and is stopped by its own pid.
`Launcher` starts every wanted scanner at its first request, so their start-ups overlap.
`FakeScanner` is a loopback server that hangs or answers garbage, for failure tests.

Nothing here imports pytest: a missing daemon is reported through the `require` callable given
to `Launcher` (the fixtures pass one that skips, or fails in CI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tests.support.dns_server import DnsTestServer
from tests.support.sink import free_port

# A 68-byte EICAR test file as an .hdb signature (md5:size:name); clamd reports it with
# ".UNOFFICIAL" appended, as for any local signature.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_HDB = "44d88612fea8a8f36de82e1278abb02f:68:Test.EICAR.HDB\n"
# Subject marker that our rspamd test rule scores at 60: between add_header (50) and reject (500).
RSPAMD_TAG_MARK = "scattergate-tag-me"

_START_TIMEOUT = 60.0


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    address: str  # as the config wants it: HOST:PORT
    ready: Callable[[], bool]
    log: Path
    unix_socket: str = ""  # "unix:/path" when it has one
    extra: list[object] = field(default_factory=list)  # helpers to stop with it (DNS server)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)  # a readiness poll, not a timing assumption
        raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for helper in self.extra:
            helper.stop()  # type: ignore[attr-defined]


def _exchange(port: int, request: bytes, limit: int = 4096) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        return sock.recv(limit)


def _start_clamd(binary: str, root: Path) -> Daemon:
    root.mkdir(parents=True)
    (root / "eicar.hdb").write_text(EICAR_HDB)
    port = free_port()
    sock_path = root / "clamd.sock"
    (root / "clamd.conf").write_text(
        "Foreground yes\n"
        f"DatabaseDirectory {root}\n"
        f"LocalSocket {sock_path}\n"
        f"TCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"LogFile {root / 'clamd.log'}\n"
        "StreamMaxLength 30M\n"
    )
    log = root / "stderr.log"
    process = subprocess.Popen([binary, "-c", str(root / "clamd.conf")], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Daemon("clamd", process, f"127.0.0.1:{port}", lambda: _exchange(port, b"zPING\0") == b"PONG\0",
                  log, unix_socket=f"unix:{sock_path}")


def _start_spamd(binary: str, root: Path) -> Daemon:
    root.mkdir(parents=True)
    port = free_port()
    log = root / "spamd.log"
    command = [binary, "-L", "-x", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1", "-m", "2",
               "-u", "nobody", "-s", "stderr"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return Daemon("spamd", process, f"127.0.0.1:{port}",
                  lambda: b"PONG" in _exchange(port, b"PING SPAMC/1.5\r\n\r\n"), log)


_RSPAMD_TEST_RULE = f"""
rspamd_config.SCATTERGATE_TEST_TAG = {{
  callback = function(task)
    local subject = task:get_subject()
    return subject ~= nil and subject:find('{RSPAMD_TAG_MARK}', 1, true) ~= nil
  end,
  score = 60.0,
  description = 'scattergate test: tag-level spam',
  group = 'scattergate_test',
}}
"""


def _start_rspamd(binary: str, root: Path) -> Daemon:
    local = root / "local.d"
    for directory in (local, root / "db", root / "run", root / "log"):
        directory.mkdir(parents=True)
    # DNS answered at once by an empty loopback zone: no internet lookups, no timeouts.
    dns = DnsTestServer({}).start()
    port = free_port()
    # A tiny TLD list: compiling the full public-suffix list takes rspamd ~12 s at start-up.
    (root / "tld.dat").write_text("com\norg\nnet\nexample\ntest\nlocalhost\n")
    (local / "options.inc").write_text(
        f'dns {{ nameserver = ["127.0.0.1:{dns.port}"]; timeout = 1s; retransmits = 1; }}\n'
        f'url_tld = "{root / "tld.dat"}";\n'
    )
    (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
    (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{free_port()}";\ncount = 0;\n')
    (local / "worker-proxy.inc").write_text(f'bind_socket = "127.0.0.1:{free_port()}";\nenabled = false;\n')
    (local / "logging.inc").write_text('type = "console";\nlevel = "warning";\n')
    # Deterministic bands for the tests: ordinary mail stays far below add_header.
    (local / "actions.conf").write_text("reject = 500;\nadd_header = 50;\ngreylist = null;\nrewrite_subject = null;\n")
    (root / "rspamd.local.lua").write_text(_RSPAMD_TEST_RULE)
    log = root / "rspamd.log"
    command = [binary, "-f", "-i", f"--var=LOCAL_CONFDIR={root}", f"--var=DBDIR={root / 'db'}",
               f"--var=RUNDIR={root / 'run'}", f"--var=LOGDIR={root / 'log'}"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def ready() -> bool:
        return b"200" in _exchange(port, b"GET /ping HTTP/1.0\r\n\r\n").split(b"\r\n", 1)[0]

    return Daemon("rspamd", process, f"127.0.0.1:{port}", ready, log, extra=[dns])


_STARTERS = {"clamd": _start_clamd, "spamd": _start_spamd, "rspamd": _start_rspamd}


SCANNER_DAEMONS = tuple(_STARTERS)


class MissingScanner(RuntimeError):
    """The daemon's binary is not installed."""


def require_installed(name: str) -> str:
    """The default `require` of a Launcher: the binary's path, or MissingScanner."""
    path = _find(name)
    if path is None:
        raise MissingScanner(f"{name} is not installed (scripts/test installs it)")
    return path


class Launcher:
    """Starts every wanted, installed scanner at the first request, so their start-ups overlap.

    `names` limits which daemons start (default: all three); `require(name)` is called before
    a daemon is handed out and decides what a missing binary means (raise, skip, fail).
    """

    def __init__(self, root: Path, names: Iterable[str] = SCANNER_DAEMONS,
                 require: Callable[[str], object] = require_installed) -> None:
        self.root = root
        self.names = tuple(names)
        unknown = set(self.names) - set(_STARTERS)
        if unknown:
            raise ValueError(f"unknown scanner daemon(s): {', '.join(sorted(unknown))}")
        self.require = require
        self.daemons: dict[str, Daemon] = {}
        self.failures: dict[str, str] = {}
        self._launched = False

    def _launch(self) -> None:
        self._launched = True
        for name in self.names:
            start = _STARTERS[name]
            binary = _find(name)
            if binary is None:
                continue
            try:
                self.daemons[name] = start(binary, self.root / name)
            except Exception as exc:  # reported by get(), to whoever needs this daemon
                self.failures[name] = str(exc)

    def get(self, name: str) -> Daemon:
        if name not in self.names:
            raise ValueError(f"{name} is not one of this launcher's daemons {self.names}")
        self.require(name)
        if not self._launched:
            self._launch()
        if name in self.failures:
            raise RuntimeError(self.failures[name])
        daemon = self.daemons[name]
        daemon.wait_ready()
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()


def _find(name: str) -> str | None:
    return next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None)


# -- a scanner that misbehaves ------------------------------------------------------------

GARBAGE = b"220 this is not a scanner\r\n\r\n{not json\0"


class FakeScanner:
    """Loopback TCP server on its own loop: 'hang' reads forever and never answers; 'garbage'
    answers nonsense, ends its side, and keeps reading so the client's writes still succeed."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.mode == "garbage":
                await reader.read(1)
                writer.write(GARBAGE)
                writer.write_eof()
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> "FakeScanner":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            current = asyncio.current_task()
            for task in [t for t in asyncio.all_tasks() if t is not current]:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
