"""`scattergate serve`: sockets, worker processes, signals, graceful shutdown.

One asyncio process saturates one core, so `workers = N` starts N processes listening on the
same port with SO_REUSEPORT and lets the kernel spread connections between them; the default,
`workers = "auto"`, starts one per core.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import logging
import os
import re
import signal
import socket
from pathlib import Path
from typing import Awaitable, Callable

from scattergate.assembly import assemble
from scattergate.config import Config, ConfigError, parse_host_port
from scattergate.frontends.smtp import gateway_connection
from scattergate.logsetup import flush_buffered, request_reopen, setup_logging
from scattergate.orgdomain import organizational_domain
from scattergate.pipeline import Gateway
from scattergate.state.factory import open_store
from scattergate.state.sqlite import SqliteStore
from scattergate.state.store import StateStore
from scattergate.web import service as web_service
from scattergate.web.service import WebSetup
from scattergate.config_check import LISTEN_SETTINGS, StartError, listen_error, validate

log = logging.getLogger(__name__)

DRAIN_SECONDS = 30.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Blocked across fork until a worker has its handlers (SIGHUP's default would kill it).
_WORKER_SIGNALS = _STOP_SIGNALS | {signal.SIGHUP}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def bind(listen: str, *, reuse_port: bool) -> socket.socket:
    host, port = parse_host_port(listen, "server.listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # The operator's words, not a bare [Errno]: which setting, which address, why.
        problem = f"server.listen: cannot listen on {listen}: {listen_error(exc)}"
        raise (StartError if exc.errno == errno.EADDRINUSE else ConfigError)(problem) from None
    return sock


def _settle_garbage_collector() -> None:
    """What start-up built (modules, config, compiled patterns, the classifier's vocabulary)
    lives as long as the process: frozen out of the collector's sight, it is not walked again
    at every full collection. A message allocates many short-lived objects, so collections of
    the youngest generation also come less often. The public suffix list is loaded here too,
    not by the first message that needs an organisational domain (tens of milliseconds)."""
    organizational_domain("example.org")
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: plain asyncio works, a bit slower
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_worker(config: Config, sock: socket.socket, *, on_ready: Callable[[int], None] | None = None,
                     web_setup: WebSetup | None = None, reload: Callable[[], Config] | None = None) -> None:
    """Serve on `sock` until SIGTERM/SIGINT, then drain the sessions in flight.

    SIGHUP re-reads the configuration (and with it keys and tables) through `reload`: new
    sessions get a new Gateway, sessions in flight finish on the old one.
    """
    loop = asyncio.get_running_loop()
    store = open_store(config)
    gateway = Gateway(config, store, assemble(config, store, web_service.metrics_for(config)))
    await gateway.start()
    web = await web_service.start(config, gateway, store, web_setup)  # metrics + dashboard
    sock.listen(1024)
    sock.setblocking(False)
    current = [gateway]  # what new connections are served by; swapped on reload
    server = await loop.create_server(lambda: gateway_connection(current[0]), sock=sock)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    retired: set[asyncio.Task[None]] = set()
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload(reload, config, store, current, retired))
    # Forked workers start with these blocked (see serve()); now a signal has a handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)
    port = sock.getsockname()[1]
    _settle_garbage_collector()
    log.info("scattergate listening on %s port %d for %s", sock.getsockname()[0], port, ", ".join(gateway.domains))
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
        log.info("shutting down: no new connections, draining sessions in flight")
        server.close()
        await current[0].wait_idle(DRAIN_SECONDS)
        await asyncio.gather(*retired, return_exceptions=True)
    finally:
        if web is not None:
            await web.stop()
        await current[0].stop()
        store.close()


def _reload(reload: Callable[[], Config], running: Config, store: StateStore,
            current: list[Gateway], retired: set["asyncio.Task[None]"]) -> None:
    """SIGHUP: build a Gateway from the re-read configuration; retire the old one when idle."""
    request_reopen()  # SIGHUP also serves log rotation
    try:
        config = reload()
        validate(config)
        if config.server.listen != running.server.listen or config.state != running.state:
            log.warning("reload: listen address and state settings change only with a restart")
            config.server.listen, config.state = running.server.listen, running.state
        # The running gateway's metrics: its counts go on, and its listener serves them.
        fresh = Gateway(config, store, assemble(config, store, current[0].parts.metrics))
    except (ConfigError, OSError, ValueError) as exc:
        log.error("reload failed, keeping the running configuration: %s", exc)
        return

    async def swap() -> None:
        await fresh.start()
        old, current[0] = current[0], fresh
        log.info("reloaded the configuration: new sessions use it, %d in flight finish on the old one",
                 old.active_sessions)
        await old.wait_idle(DRAIN_SECONDS)
        await old.stop()

    task = asyncio.get_running_loop().create_task(swap())
    retired.add(task)
    task.add_done_callback(retired.discard)


def serve(config: Config, reload: Callable[[], Config] | None = None) -> int:
    setup_logging(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    web_setup = web_service.prepare(config)  # before fork: token, shared secret, metrics mode
    workers = config.server.process_count()
    if workers == 1:
        sock = bind(config.server.listen, reuse_port=False)
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(run_worker(config, sock, web_setup=web_setup, reload=reload))
        return 0
    # Reserve the port (resolving port 0) in the parent, then let each worker bind its own
    # listening socket to it: the kernel balances connections across SO_REUSEPORT listeners.
    reserved = bind(config.server.listen, reuse_port=True)
    host = reserved.getsockname()[0]
    config.server.listen = f"[{host}]:{reserved.getsockname()[1]}" if ":" in host else f"{host}:{reserved.getsockname()[1]}"
    # Create the schema and the site secret once, so the workers don't race to create them.
    if config.backscatter.mode != "off" or config.backscatter.batv_mode != "off":
        from scattergate.rewrite.keys import load_or_create_site_secret

        load_or_create_site_secret(config.site_secret_file)
    if config.state.backend == "sqlite":
        SqliteStore(config.data_dir / "state.sqlite3").close()
    # A SIGTERM arriving before a worker has installed its handler would kill it mid-start:
    # keep the stop signals blocked across fork until each process has its handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
    children = []
    parent = os.getpid()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _stop_when_parent_dies(parent)
                sock = bind(config.server.listen, reuse_port=True)
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    runner.run(run_worker(config, sock, web_setup=web_setup, reload=reload))
                code = 0
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                flush_buffered()  # os._exit runs no clean-up: the last lines first
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in _STOP_SIGNALS:
            stopping = True
        else:
            request_reopen()  # the parent's own log file, for logrotate
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    stopping = False
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGUSR1, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)
    status = 0
    remaining = set(children)
    while remaining:
        pid, code = os.wait()
        if pid not in remaining:
            continue
        remaining.discard(pid)
        exit_code = os.waitstatus_to_exitcode(code)
        status = status or exit_code
        if exit_code != 0 and not stopping:
            # A worker that dies leaves the port half-served; fail as a whole, so the
            # supervisor (systemd, the container runtime) restarts a complete gateway.
            log.error("worker %d exited with %d: stopping the other workers", pid, exit_code)
            stopping = True
            forward(signal.SIGTERM, None)
    return status


def _stop_when_parent_dies(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG), so a parent
    killed with SIGKILL never leaves workers serving the port on their own: they drain and
    exit like on a normal stop (spooled mail is on disk). Postfix's daemons likewise leave
    when their master is gone. The signal is still blocked here; the worker's handler takes it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's cgroup kill is the net
        return
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


# -- helpers for the Postfix-side services (milter, policy, socketmap) -----------------------

StreamCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def parse_listen(listen: str) -> tuple[str, str, int]:
    """'inet:HOST:PORT', 'HOST:PORT' or 'unix:PATH' → ("inet", host, port) / ("unix", path, 0)."""
    if listen.startswith("unix:"):
        path = listen[5:]
        if not path:
            raise ConfigError(f"expected unix:PATH, got {listen!r}")
        return "unix", path, 0
    if listen.startswith("inet:"):
        listen = listen[5:]
    host, port = parse_host_port(listen, "listen")
    return "inet", host, port


async def start_stream_server(listen: str, callback: StreamCallback, *, socket_mode: int = 0o660,
                              socket_group: str = "") -> asyncio.AbstractServer:
    """Listen on a TCP or unix socket. A unix socket gets `socket_mode` and `socket_group`
    at every start (Postfix's daemons run as 'postfix' and must be able to connect; a chgrp
    by hand would be lost at the next restart). A missing directory is created (0755: the
    chrooted smtpd must reach the socket in it)."""
    kind, where, port = parse_listen(listen)
    if kind == "unix":
        path = Path(where)
        gid = _group_id(socket_group) if socket_group else -1
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StartError(f"cannot create the socket directory {path.parent}: {exc.strerror}") from None
        if path.exists() and not path.is_socket():
            raise StartError(f"cannot listen on unix:{path}: a file that is not a socket is in the way")
        # Bound under a private name, given its mode and group, then renamed into place: no
        # client ever finds the socket with the wrong permissions. The rename also replaces a
        # socket a previous run left behind.
        private = path.with_name(f".{path.name}.{os.getpid()}")
        private.unlink(missing_ok=True)
        try:
            server = await asyncio.start_unix_server(callback, path=str(private), backlog=1024)
            os.chmod(private, socket_mode)
            if gid != -1:
                os.chown(private, -1, gid)
            os.replace(private, path)
        except OSError as exc:
            private.unlink(missing_ok=True)
            raise StartError(f"cannot listen on unix:{path}: {listen_error(exc)}") from None
        return server
    try:
        return await asyncio.start_server(callback, where, port, reuse_address=True, backlog=1024)
    except OSError as exc:
        # asyncio words it "[Errno 98] error while attempting to bind ...": say it plainly.
        raise StartError(f"cannot listen on {listen}: {listen_error(exc)}") from None


def _group_id(name: str) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"postfix.socket_group: no group named {name!r}") from None


def listening_on(server: asyncio.AbstractServer) -> str:
    name = server.sockets[0].getsockname()
    if isinstance(name, tuple):
        return f"inet:{name[0]}:{name[1]}"
    # A unix socket was bound under its private name (start_stream_server), then renamed.
    bound = Path(name)
    public = re.fullmatch(r"\.(.+)\.\d+", bound.name)
    return f"unix:{bound.with_name(public.group(1)) if public else bound}"


def run_service(config: Config, name: str,
                start: Callable[[Gateway], Awaitable[asyncio.AbstractServer]]) -> int:
    """Run one Postfix-side service (milter, policy) around a Gateway until SIGTERM/SIGINT.
    Metrics and the dashboard come with it, as with `serve` (`[http] listen = ""` turns them off;
    a port already taken, e.g. by a `serve` on the same host, is logged and left off)."""
    setup_logging(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    web_setup = web_service.prepare(config, processes=1)  # one process, whatever server.workers says

    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = open_store(config)
        gateway = Gateway(config, store, assemble(config, store, web_service.metrics_for(config),
                                                  behind_postfix=True))
        await gateway.start()
        web = await web_service.start(config, gateway, store, web_setup)
        stop = asyncio.Event()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, stop.set)
        try:
            try:
                server = await start(gateway)
            except StartError as exc:
                setting = next(iter(LISTEN_SETTINGS.get(name, ("listen",))))
                raise StartError(f"{setting}: {exc}") from None
            _settle_garbage_collector()
            log.info("scattergate %s listening on %s for %s", name, listening_on(server), ", ".join(gateway.domains))
            await stop.wait()
            server.close()
            await gateway.wait_idle(DRAIN_SECONDS)
        finally:
            if web is not None:
                await web.stop()
            await gateway.stop()
            store.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0
