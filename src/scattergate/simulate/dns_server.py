"""A small authoritative DNS server on loopback UDP and TCP, for tests and `scattergate simulate`.

Zone data is a dict: name -> list of (type, rdata). Rdata is the zone-file text for most types;
TXT and SPF also take a str (one record; UTF-8, split into 255-octet strings), bytes, or a
list/tuple of str/bytes (one record made of several strings, possibly none).

Knobs for failure tests, each keyed by a name or by (name, type):
- `servfail`: answer SERVFAIL;
- `delay`: hold the answer this many seconds (on the server's own loop, so tests never sleep);
- `drop`: never answer (a timeout);
- `truncate`: set TC over UDP regardless of size (big answers are truncated anyway when they
  exceed the client's UDP payload size), so resolvers must retry over TCP.

The server runs in a background thread with its own event loop: `start()`/`stop()` or use it
as a context manager, from sync or async tests alike. `port` is the actual port (asked for 0).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence, Union

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

if TYPE_CHECKING:
    from scattergate.net.dns import DnsConfig

RdataValue = Union[str, bytes, Sequence[Union[str, bytes]], Sequence[object]]
Zone = Mapping[str, Iterable[tuple[str, RdataValue]]]
Key = Union[str, tuple[str, str]]

_MAX_CNAME_CHAIN = 8


class DnsTestServer:
    def __init__(self, zone: Zone | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ttl: int = 300, soa_minimum: int = 60) -> None:
        self.host = host
        self._want_port = port
        self.port = 0
        self.ttl = ttl
        self.soa_minimum = soa_minimum
        self.servfail: set[Key] = set()
        self.drop: set[Key] = set()
        self.truncate: set[Key] = set()
        self.delay: dict[Key, float] = {}
        # (qname, qtype, "udp"|"tcp") of every query received, for assertions.
        self.queries: list[tuple[str, str, str]] = []
        self._records: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._pending: set[asyncio.Handle] = set()
        self.set_zone(zone or {})

    # --- zone data ----------------------------------------------------------------------------

    def set_zone(self, zone: Zone) -> None:
        """Replace all zone data (and reset the knobs and the query log)."""
        records: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        for owner, entries in zone.items():
            name = _name(owner)
            rdatas = records.setdefault(name, [])
            for rtype, value in entries:
                rdatas.append(_make_rdata(rtype, value))
        with self._lock:
            self._records = records
            self.servfail.clear()
            self.drop.clear()
            self.truncate.clear()
            self.delay.clear()
            self.queries.clear()

    def add(self, owner: str, rtype: str, value: RdataValue) -> None:
        with self._lock:
            self._records.setdefault(_name(owner), []).append(_make_rdata(rtype, value))

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "DnsTestServer":
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # report to start(), don't die silently
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="dns-test-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> "DnsTestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        # TCP first on the asked port (maybe 0), then UDP on the same number.
        self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self._want_port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(self.host, self.port))

    async def _close(self) -> None:
        for handle in list(self._pending):
            handle.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    # --- answering ----------------------------------------------------------------------------

    def _knob(self, table: set[Key] | dict[Key, float], qname: dns.name.Name,
              qtype: int) -> Key | None:
        text = qname.to_text(omit_final_dot=True).lower()
        tname = dns.rdatatype.to_text(qtype)
        for key in ((text, tname), text):
            if key in table:
                return key
        return None

    def _plan(self, wire: bytes, proto: str) -> tuple[bytes | None, float]:
        """The reply (None = drop) and how long to hold it."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        if not query.question:
            return None, 0.0
        q = query.question[0]
        with self._lock:
            self.queries.append((q.name.to_text(omit_final_dot=True),
                                 dns.rdatatype.to_text(q.rdtype), proto))
            if self._knob(self.drop, q.name, q.rdtype) is not None:
                return None, 0.0
            key = self._knob(self.delay, q.name, q.rdtype)
            hold = self.delay[key] if key is not None else 0.0
            response = self._answer(query, q.name, q.rdtype)
            force_tc = self._knob(self.truncate, q.name, q.rdtype) is not None
        if proto == "tcp":
            return response.to_wire(max_size=65535), hold
        limit = 512
        if query.edns >= 0:
            limit = max(512, query.payload)
        wire_out = None
        if not force_tc:
            try:
                wire_out = response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                wire_out = None
        if wire_out is None:
            short = dns.message.make_response(query)
            short.flags |= dns.flags.AA | dns.flags.TC
            wire_out = short.to_wire()
        return wire_out, hold

    def _answer(self, query: dns.message.Message, qname: dns.name.Name,
                qtype: int) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self._knob(self.servfail, qname, qtype) is not None:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        name = qname
        seen: set[dns.name.Name] = set()
        for _ in range(_MAX_CNAME_CHAIN):
            rdatas = self._records.get(name)
            if rdatas is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa())
                return response
            matching = [r for r in rdatas if r.rdtype == qtype]
            cnames = [r for r in rdatas if r.rdtype == dns.rdatatype.CNAME]
            if matching or not cnames or qtype == dns.rdatatype.CNAME:
                if matching:
                    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, qtype)
                    for r in matching:
                        rrset.add(r, self.ttl)
                    response.answer.append(rrset)
                else:
                    response.authority.append(self._soa())
                return response
            # Follow the CNAME inside our data, as an authoritative server does; a loop stops.
            rrset = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.CNAME)
            rrset.add(cnames[0], self.ttl)
            response.answer.append(rrset)
            seen.add(name)
            name = cnames[0].target  # type: ignore[attr-defined]
            if name in seen:
                return response
        return response

    def _soa(self) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(dns.name.root, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.test. hostmaster.test. 1 3600 600 86400 {self.soa_minimum}"), self.soa_minimum)
        return rrset

    def _send_later(self, hold: float, send: Callable[[], None]) -> None:
        assert self._loop is not None
        if hold <= 0:
            send()
            return

        def fire() -> None:
            self._pending.discard(handle)
            send()

        handle = self._loop.call_later(hold, fire)
        self._pending.add(handle)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                wire = await reader.readexactly(length)
                reply, hold = self._plan(wire, "tcp")
                if reply is None:
                    continue
                if hold > 0:
                    await asyncio.sleep(hold)  # the server's loop holds; other clients go on
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsTestServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply, hold = self.server._plan(data, "udp")
        if reply is None or self.transport is None:
            return
        transport = self.transport

        def send() -> None:
            if not transport.is_closing():
                transport.sendto(reply, addr)

        self.server._send_later(hold, send)


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text.rstrip(".") + ".") if text not in ("", ".") else dns.name.root


def _make_rdata(rtype: str, value: RdataValue) -> dns.rdata.Rdata:
    rdtype = dns.rdatatype.from_text(rtype.upper())
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return _txt(rdtype, value)
    if isinstance(value, (list, tuple)):  # e.g. MX as [preference, exchange]
        value = " ".join(str(v) for v in value)
    text = value.decode() if isinstance(value, bytes) else str(value)
    if rdtype in (dns.rdatatype.CNAME, dns.rdatatype.PTR, dns.rdatatype.MX, dns.rdatatype.NS):
        text = text if text.endswith(".") else text + "."  # zone text would be relative otherwise
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def _txt(rdtype: int, value: RdataValue) -> dns.rdata.Rdata:
    pieces = [value] if isinstance(value, (str, bytes)) else list(value)
    strings: list[bytes] = []
    for piece in pieces:
        raw = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)  # type: ignore[arg-type]
        strings.extend(raw[i:i + 255] for i in range(0, len(raw), 255))
        if not raw:
            strings.append(b"")
    # A TXT RR with no strings at all can't be parsed by dnspython (nor written in a zone
    # file): serve it as one empty string, the nearest legal record.
    cls = dns.rdata.get_rdata_class(dns.rdataclass.IN, rdtype)
    return cls(dns.rdataclass.IN, rdtype, strings or [b""])


def resolver_config(server: DnsTestServer, **overrides: object) -> "DnsConfig":
    """A `scattergate.net.dns.DnsConfig` pointing at `server`, with short test timeouts."""
    from scattergate.net.dns import DnsConfig  # imported late: the server itself needs no app

    settings: dict[str, object] = {"nameservers": (server.host,), "port": server.port,
                                   "timeout": 0.5, "lifetime": 0.5}
    settings.update(overrides)
    return DnsConfig(**settings)  # type: ignore[arg-type]
