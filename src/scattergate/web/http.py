"""A small HTTP/1.1 server on asyncio streams, for /metrics and the dashboard.

Why our own and not aiohttp: we serve a handful of GET pages and url-encoded form POSTs to an
operator and a Prometheus scraper. That needs request-line and header parsing, Content-Length
bodies and limits — about 150 lines — while aiohttp would add a large dependency tree (and its
release cadence) to a mail gateway for that. One request per connection (`Connection: close`)
keeps it simple; chunked request bodies are refused with 411.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_HEADER = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated field keeps its last value
    body: bytes = b""
    client: str = ""

    def form(self) -> dict[str, str]:
        if not self.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return {}
        return _single(parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, head_only: bool = False) -> bytes:
        reason = HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", "Connection: close", "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff", "X-Frame-Options: DENY",
                 "Referrer-Policy: same-origin",
                 # Nothing is loaded from anywhere: a held message shown as text can never make
                 # the browser fetch a tracker, and no script runs even if escaping failed.
                 "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
                 "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else self.body)


def text(status: int, message: str) -> Response:
    return Response(status, message.encode() + b"\n", "text/plain; charset=utf-8")


def redirect(location: str, *headers: tuple[str, str]) -> Response:
    return Response(303, b"", "text/plain", [("Location", location), *headers])


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        sock.listen(128)
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEADER)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await _read_request(reader)
                    request.client = str((writer.get_extra_info("peername") or ("",))[0])
            except _BadRequest as exc:
                response = text(exc.status, exc.message)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            else:
                head_only = request.method == "HEAD"
                if head_only:
                    request.method = "GET"
                try:
                    response = await self._handler(request)
                except Exception:
                    log.exception("HTTP %s %s failed", request.method, request.path)
                    response = text(500, "internal error")
            writer.write(response.encode(head_only))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(431, "request header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "bad request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "bad header line")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "send a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise _BadRequest(400, "bad Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise _BadRequest(413, "request body too large")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    if not url.path.startswith("/"):
        raise _BadRequest(400, "bad request target")
    return Request(method, url.path, _single(parse_qs(url.query, keep_blank_values=True)), headers, body)


def _single(values: dict[str, list[str]]) -> dict[str, str]:
    return {name: items[-1] for name, items in values.items()}
