"""The SMTP front end on loopback, in the test's own loop: how replies leave the socket."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import aiosmtplib

from scattergate.config import Config
from scattergate.frontends.smtp import gateway_connection
from tests.support.gateway import running_gateway


async def test_a_multi_line_ehlo_reply_leaves_in_one_write(
        make_config: Callable[..., Config]) -> None:
    async with running_gateway(make_config()) as gateway:
        # Every write the server side makes, as the transport is asked for it.
        writes: list[bytes] = []

        def recording_connection() -> asyncio.Protocol:
            connection = gateway_connection(gateway)
            made = connection.connection_made

            def connection_made(transport: Any) -> None:
                real_write = transport.write
                transport.write = lambda data: (writes.append(bytes(data)), real_write(data))[1]
                made(transport)

            connection.connection_made = connection_made  # type: ignore[method-assign]
            return connection

        server = await asyncio.get_running_loop().create_server(recording_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="client.example.net",
                                 start_tls=False, timeout=10)
        try:
            await client.connect()
            ehlo = await client.ehlo()
            assert ehlo.code == 250
            greeting, ehlo_write = writes[:2]
            assert greeting.startswith(b"220 ") and greeting.count(b"\r\n") == 1
            # The whole reply in one write: continuation lines first, the final line last.
            lines = ehlo_write.split(b"\r\n")
            assert lines[-1] == b"" and len(lines) > 3, ehlo_write
            assert all(line.startswith(b"250-") for line in lines[:-2]) and lines[-2].startswith(b"250 ")
            # The client still reads every extension advertised in that write.
            advertised = {line[4:].split(b" ")[0].decode().lower() for line in lines[1:-1]}
            assert advertised == set(client.esmtp_extensions) and {"8bitmime", "size"} <= advertised

            # Single-line replies after it still go out, each on its own, and the session goes on.
            assert (await client.noop()).code == 250
            assert (await client.mail("a@example.net")).code == 250
            assert (await client.rset()).code == 250
            assert len(writes) == 5 and all(w.count(b"\r\n") == 1 and w[3:4] == b" " for w in writes[2:])
        finally:
            client.close()
            server.close()
            await server.wait_closed()
