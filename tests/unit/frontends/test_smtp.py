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


async def test_a_client_that_pipelines_without_reading_is_paused_not_buffered(
        make_config: Callable[..., Config]) -> None:
    # Backpressure: 2 MB of pipelined NOOPs from a client that reads no reply. Once the replies
    # back up, the server stops reading instead of holding the rest; every reply still arrives
    # once the client reads.
    from scattergate.frontends import smtp_server

    config = make_config(server={"max_commands": 400_000})
    async with running_gateway(config) as gateway:
        connections: list[Any] = []
        peak = [0]

        def factory() -> asyncio.Protocol:
            connection = gateway_connection(gateway)
            received = connection.data_received

            def data_received(data: bytes) -> None:
                received(data)
                peak[0] = max(peak[0], connection.machine.buffered)

            connection.data_received = data_received  # type: ignore[method-assign]
            connections.append(connection)
            return connection

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await reader.readline()  # the banner
            count = 350_000
            writer.write(b"NOOP\r\n" * count)
            for _ in range(1_000_000):  # bounded: yield to the server until it stops reading
                if connections[0]._reading_paused:
                    break
                await asyncio.sleep(0)
            assert connections[0]._reading_paused
            replies = 0
            async with asyncio.timeout(120):
                while replies < count:
                    line = await reader.readline()
                    assert line == b"250 2.0.0 OK\r\n", line
                    replies += 1
            await writer.drain()
            # At most one read (256 KiB) beyond the high-water mark was ever held.
            assert peak[0] <= smtp_server._HIGH_WATER + 256 * 1024, peak
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
