"""`scattergate srs-socketmap`: SRS forward/reverse as a Postfix socketmap (postsrsd-compatible).

Postfix's socketmap protocol: each request and reply is a netstring ("LEN:DATA,"); a request
is "MAPNAME KEY", a reply "OK value", "NOTFOUND ", "TEMP reason", "PERM reason". The answers
come from rewrite/srs.py's pure `socketmap_reply`; this module only frames and serves them.

    sender_canonical_maps = socketmap:inet:127.0.0.1:10044:forward
    recipient_canonical_maps = socketmap:inet:127.0.0.1:10044:reverse
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Collection

from scattergate.config import Config, ConfigError
from scattergate.rewrite.keys import SrsSecrets, load_srs_secrets
from scattergate.rewrite.srs import socketmap_reply

log = logging.getLogger(__name__)

MAX_REQUEST = 10_000  # Postfix's socketmap_max_reply_size is 100000; requests are addresses


class NetstringError(ValueError):
    """Not a netstring: close the connection."""


class NetstringDecoder:
    def __init__(self, max_size: int = MAX_REQUEST) -> None:
        self._buffer = b""
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data
        out: list[bytes] = []
        while True:
            colon = buffer.find(b":")
            if colon < 0:
                if len(buffer) > len(str(self._max)) or (buffer and not buffer.isdigit()):
                    raise NetstringError("bad netstring length")
                break
            digits = buffer[:colon]
            if not digits.isdigit() or len(digits) > len(str(self._max)):
                raise NetstringError("bad netstring length")
            length = int(digits)
            if length > self._max:
                raise NetstringError("netstring too long")
            end = colon + 1 + length
            if len(buffer) < end + 1:
                break
            if buffer[end:end + 1] != b",":
                raise NetstringError("netstring without its comma")
            out.append(buffer[colon + 1:end])
            buffer = buffer[end + 1:]
        self._buffer = buffer
        return out


def netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def today() -> int:
    return int(time.time() // 86400)


def answer(request: bytes, domain: str, secrets: SrsSecrets, local_domains: Collection[str] = ()) -> bytes:
    text = request.decode("utf-8", "surrogateescape")
    reply = socketmap_reply(text, domain, secrets, today(), local_domains=local_domains)
    return netstring(reply.encode("utf-8", "surrogateescape"))


def handler(domain: str, secrets: SrsSecrets, local_domains: Collection[str] = ()
            ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = NetstringDecoder()
        try:
            while data := await reader.read(65536):
                for request in decoder.feed(data):
                    writer.write(answer(request, domain, secrets, local_domains))
                await writer.drain()
        except NetstringError as exc:
            log.warning("socketmap: protocol error, closing: %s", exc)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return on_connection


def run(config: Config) -> int:
    """`scattergate srs-socketmap`: serve until SIGTERM/SIGINT (no Gateway involved)."""
    from scattergate.logsetup import setup_logging
    from scattergate.serve import listening_on, new_event_loop, start_stream_server

    settings = config.postfix
    if not settings.srs_domain or not settings.srs_secrets_file:
        raise ConfigError("srs-socketmap needs postfix.srs_domain and postfix.srs_secrets_file (--srs-domain, --secrets)")
    secrets = load_srs_secrets(settings.srs_secrets_file)
    config.logging.file = ""
    setup_logging(config)

    async def main() -> None:
        import signal

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await start_stream_server(settings.socketmap_listen,
                                           handler(settings.srs_domain, secrets, config.receive.domains),
                                           socket_mode=settings.socket_mode)
        log.info("scattergate srs-socketmap listening on %s for %s", listening_on(server), settings.srs_domain)
        await stop.wait()
        server.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0
