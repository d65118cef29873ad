"""Our gateway in a background thread, so tests can use blocking clients (smtplib, sockets)."""

from __future__ import annotations

import asyncio
import threading

from scattergate.config import Config
from scattergate.frontends.smtp import GatewaySMTP
from scattergate.pipeline import Gateway
from scattergate.state.factory import open_store


class GatewayThread:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.store = open_store(config)
        self.gateway = Gateway(config, self.store)
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("gateway did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        await self.gateway.start()
        self._server = await self.loop.create_server(lambda: GatewaySMTP(self.gateway), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def call(self, coro):  # type: ignore[no-untyped-def]
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def flush(self) -> None:
        self.call(self.gateway.recorder.flush())

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
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
