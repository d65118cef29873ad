"""`scattergate socketmap`: BATV and SRS address rewriting as a Postfix socketmap.

Postfix's socketmap protocol: each request and reply is a netstring ("LEN:DATA,"); a request
is "MAPNAME KEY", a reply "OK value", "NOTFOUND ", "TEMP reason", "PERM reason". Maps:
- `batv`: a recipient with a *valid* BATV tag of ours (`prvs=...=alice@example.org`, the
  address genuine bounces for our signed mail come back to) maps to the bare address; anything
  else is NOTFOUND. Postfix's smtpd counts an address that `recipient_canonical_maps` matches
  as a valid recipient, so a forged tag stays unknown and is refused at RCPT.
- `forward`, `reverse`: SRS, postsrsd-compatible (rewrite/srs.py's pure `socketmap_reply`),
  when an SRS domain and secrets are configured.

    recipient_canonical_maps = socketmap:inet:127.0.0.1:10044:batv, socketmap:inet:127.0.0.1:10044:reverse
    sender_canonical_maps = socketmap:inet:127.0.0.1:10044:forward
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Collection

from dataclasses import dataclass

from scattergate.config import Config
from scattergate.rewrite import batv
from scattergate.rewrite.keys import BatvKeyring, SrsSecrets, load_site_keys, load_srs_secrets
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


@dataclass(frozen=True, slots=True)
class Maps:
    """What the socketmap serves: BATV always, SRS when configured."""

    batv_keys: BatvKeyring | None = None
    srs_domain: str = ""
    srs_secrets: SrsSecrets | None = None
    local_domains: Collection[str] = ()


def batv_reply(key: str, keyring: BatvKeyring, day: int) -> str:
    """The `batv` map: the bare address for a valid tag of ours, else NOTFOUND."""
    result = batv.verify(key, keyring, day)
    return f"OK {result.address}" if result.valid else "NOTFOUND "


def answer(request: bytes, maps: Maps) -> bytes:
    text = request.decode("utf-8", "surrogateescape")
    name, _, key = text.partition(" ")
    if name == "batv" and maps.batv_keys is not None:
        reply = batv_reply(key, maps.batv_keys, today())
    elif name in ("forward", "reverse") and maps.srs_secrets is not None:
        reply = socketmap_reply(text, maps.srs_domain, maps.srs_secrets, today(), local_domains=maps.local_domains)
    else:
        reply = "PERM Invalid map."
    return netstring(reply.encode("utf-8", "surrogateescape"))


def handler(maps: Maps) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = NetstringDecoder()
        try:
            while data := await reader.read(65536):
                for request in decoder.feed(data):
                    writer.write(answer(request, maps))
                await writer.drain()
        except NetstringError as exc:
            log.warning("socketmap: protocol error, closing: %s", exc)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return on_connection


def load_maps(config: Config) -> Maps:
    """BATV keys as the milter signs with them (the same site secret or keys file), and SRS
    when both postfix.srs_domain and postfix.srs_secrets_file are set."""
    keys = None
    if config.backscatter.batv_mode != "off" or config.backscatter.batv_modes:
        _, keys = load_site_keys(config)
    settings = config.postfix
    srs_secrets = None
    if settings.srs_domain and settings.srs_secrets_file:
        srs_secrets = load_srs_secrets(settings.srs_secrets_file)
    return Maps(keys, settings.srs_domain, srs_secrets, tuple(config.receive.domains))


def run(config: Config) -> int:
    """`scattergate socketmap`: serve until SIGTERM/SIGINT (no Gateway involved)."""
    from scattergate.logsetup import setup_logging
    from scattergate.serve import listening_on, new_event_loop, start_stream_server

    maps = load_maps(config)
    settings = config.postfix
    config.logging.file = ""
    setup_logging(config)

    async def main() -> None:
        import signal

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await start_stream_server(settings.socketmap_listen, handler(maps),
                                           socket_mode=settings.socket_mode, socket_group=settings.socket_group)
        served = ["batv"] if maps.batv_keys is not None else []
        served += ["forward", "reverse"] if maps.srs_secrets is not None else []
        log.info("scattergate socketmap listening on %s: maps %s", listening_on(server), ", ".join(served) or "none")
        await stop.wait()
        server.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    return 0
