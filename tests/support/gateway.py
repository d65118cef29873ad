"""Our gateway in a background thread, so tests can use blocking clients (smtplib, sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, AsyncIterator

from scattergate.assembly import assemble
from scattergate.config import Config
from scattergate.frontends.smtp import gateway_connection
from scattergate.pipeline import Gateway
from scattergate.state.factory import open_store
from scattergate.web.service import metrics_for


@contextlib.asynccontextmanager
async def running_gateway(config: Config, *, behind_postfix: bool = False) -> AsyncIterator[Gateway]:
    """A started Gateway on the test's own event loop, no servers in front: for tests that
    drive a front end's state machine (milter, policy) or the pipeline directly.
    `behind_postfix`: assembled as `scattergate milter` / `policy` assemble it."""
    store = open_store(config)
    gateway = Gateway(config, store, assemble(config, store, behind_postfix=behind_postfix))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
        store.close()


class ServiceThread:
    """A Gateway and the servers in front of it, on an event loop of their own in a thread."""

    behind_postfix = False  # True: assembled as `scattergate milter` / `policy` assemble it

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.store = open_store(config)
        # Metrics when the HTTP listener is on, as `serve` assembles them.
        self.gateway = Gateway(config, self.store, assemble(config, self.store, metrics_for(config),
                                                            behind_postfix=self.behind_postfix))
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> Any:
        self._thread.start()
        self.call(self._open())
        return self

    async def _open(self) -> None:
        await self.gateway.start()
        self._servers = await self.open_servers()

    async def open_servers(self) -> list[asyncio.AbstractServer]:
        raise NotImplementedError

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def flush(self) -> None:
        self.call(self.gateway.recorder.flush())

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            await self.gateway.stop()
            # Sessions a test left open end with the gateway, not after it.
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


class GatewayThread(ServiceThread):
    """The SMTP front end on `host` (127.0.0.1 unless a subclass says otherwise), a free port."""

    host = "127.0.0.1"
    port = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    async def open_servers(self) -> list[asyncio.AbstractServer]:
        server = await self.loop.create_server(lambda: gateway_connection(self.gateway), self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        return [server]
