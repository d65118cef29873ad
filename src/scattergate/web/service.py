"""Start and stop the HTTP listener (metrics + dashboard) beside a gateway worker.

`prepare()` runs once in the parent before workers fork: it reads the token (so a bad token
file stops `serve` at once, not each worker), makes the CSRF secret every worker shares, names
the login-session directory they share, and
switches prometheus-client to multiprocess mode when there are several workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from scattergate.config import Config, parse_host_port
from scattergate.pipeline import Gateway
from scattergate.state.store import StateStore
from scattergate.web.auth import Guard, Sessions, read_token

if TYPE_CHECKING:
    from scattergate.web.app import Dashboard
    from scattergate.web.http import HttpServer
    from scattergate.web.metrics import Metrics

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 60.0  # seconds between counter samples for the DSN chart


@dataclass(frozen=True, slots=True)
class WebSetup:
    guard: Guard
    reuse_port: bool


def prepare(config: Config, processes: int | None = None) -> WebSetup | None:
    """`processes`: how many processes will serve (default: `serve`'s worker count). A
    one-process service (milter, policy) must say 1: multiprocess mode would empty
    `<data_dir>/metrics`, the live samples of a `serve` sharing the data directory."""
    if not config.http.listen:
        return None
    token = read_token(config.http.token_file) if config.http.token_file else ""
    several = (processes if processes is not None else config.server.process_count()) > 1
    if several:
        prepare_multiprocess(config.data_dir)
        # Each worker binds the port with SO_REUSEPORT; port 0 must be resolved once here.
        host, port = parse_host_port(config.http.listen, "http.listen")
        if port == 0:
            with _socket(host, reuse_port=True) as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
            config.http.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sessions = Sessions(config.data_dir / "web-sessions", token) if token else None
    return WebSetup(Guard(token, os.urandom(32), sessions), reuse_port=several)


def prepare_multiprocess(data_dir: Path) -> None:
    """An empty sample directory for prometheus-client's multiprocess mode, named in the
    environment. prometheus-client picks its value storage when it is first imported, so this
    runs before fork and before anything here imports it (this module must not)."""
    directory = data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)  # samples of a previous run are not ours
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


class WebService:
    def __init__(self, server: HttpServer, sampler: asyncio.Task[None]) -> None:
        self.server = server
        self.sampler = sampler

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self) -> None:
        self.sampler.cancel()
        try:
            await self.sampler
        except asyncio.CancelledError:
            pass
        await self.server.stop()


def metrics_for(config: Config) -> Metrics | None:
    """The metrics to assemble a gateway with (`assembly.assemble(config, store, metrics)`),
    or None when the HTTP listener is off. After `prepare()`, which picks their storage."""
    if not config.http.listen:
        return None
    from scattergate.web.metrics import Metrics

    return Metrics(config.data_dir / "spool", config.data_dir / "quarantine")


async def start(config: Config, gateway: Gateway, store: StateStore, setup: WebSetup | None = None) -> WebService | None:
    """The listener for the metrics `gateway` was assembled with, and the dashboard.

    A listener that cannot bind is logged and left off: mail matters more than its dashboard.
    """
    setup = setup if setup is not None else prepare(config)
    if setup is None:
        return None
    metrics = gateway.parts.metrics
    if metrics is None:  # a wiring mistake, not a setting: a listener with nothing fed to it
        raise ValueError("the gateway was assembled without metrics: pass web.service.metrics_for(config)")
    from scattergate.web.app import Dashboard
    from scattergate.web.http import HttpServer

    host, port = parse_host_port(config.http.listen, "http.listen")
    try:
        sock = _socket(host, reuse_port=setup.reuse_port)
        sock.bind((host, port))
    except OSError as exc:
        log.error("cannot listen for HTTP on %s (%s): metrics and dashboard are off", config.http.listen, exc)
        return None
    dashboard = Dashboard(config, store, metrics, setup.guard)
    server = HttpServer(dashboard.handle)
    await server.start(sock)
    log.info("metrics and dashboard on http://%s:%d/", host if ":" not in host else f"[{host}]", server.port)
    return WebService(server, asyncio.get_running_loop().create_task(_sample(dashboard)))


async def _sample(dashboard: Dashboard) -> None:
    while True:
        try:
            counters = await asyncio.to_thread(dashboard.store.counters)
            dashboard.samples.add(counters)
        except Exception:
            log.exception("cannot sample counters for the dashboard")
        await asyncio.sleep(SAMPLE_INTERVAL)


def _socket(host: str, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock
