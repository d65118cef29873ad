"""An async DNS resolver with a TTL-respecting cache and a typed, plain-Python API.

Built on `dns.asyncresolver` so a slow answer never blocks the event loop. The nameservers and
their port are configurable (tests point them at a loopback server). Answers are cached by TTL
(capped), negative answers (NXDOMAIN / NODATA) by the SOA minimum (RFC 2308, capped); temporary
failures are cached only briefly, if at all, so one SERVFAIL doesn't stick.

Errors are a small hierarchy: `DnsTempError` (timeout, SERVFAIL, REFUSED, network) means "ask
again later"; `DnsNotFound` (NXDOMAIN, or a name that cannot exist) means "no such name"; a name
that exists without records of the asked type (NODATA) is an empty list, not an error.

Libraries with blocking DNS hooks (pyspf, dkimpy) run in worker threads through
`Resolver.run_blocking`; their lookups come back to this resolver on the event loop, so they
share its cache and its timeouts. `Resolver.run_cached_first` runs such a function on the loop
itself when the cache already holds every answer it asks for (see there why).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

log = logging.getLogger(__name__)

T = TypeVar("T")


class DnsError(Exception):
    """Base of the resolver's errors."""


class DnsTempError(DnsError):
    """A temporary failure: timeout, SERVFAIL, REFUSED, unreachable server. Retry later."""


class DnsNotFound(DnsError):
    """NXDOMAIN: the name does not exist (or is not a valid DNS name)."""


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Resolver settings. Empty `nameservers` means the system's /etc/resolv.conf."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0  # one attempt at one server
    lifetime: float = 5.0  # the whole query, retries and TCP fallback included
    cache_size: int = 10_000  # entries; 0 disables the cache
    max_ttl: float = 3600.0  # cap for positive answers
    min_ttl: float = 0.0  # floor for positive answers (0 = trust the zone)
    negative_max_ttl: float = 900.0  # cap for NXDOMAIN/NODATA (RFC 2308 suggests ≤ 3 h)
    negative_default_ttl: float = 60.0  # when the answer carries no SOA
    tempfail_ttl: float = 0.0  # seconds to remember a SERVFAIL/timeout; 0 = never
    blocking_workers: int = 8  # threads for blocking libraries (pyspf, dkimpy)


# What the cache holds for one (name, type): records, or the error to raise again.
@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    records: tuple[dns.rdata.Rdata, ...] = ()
    error: DnsError | None = None


class Resolver:
    """Async, cached resolver. One per process is enough; it is safe to share between tasks."""

    def __init__(self, config: DnsConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or DnsConfig()
        self._clock = clock
        self._cache: dict[tuple[str, int], _Entry] = {}
        self._keys: dict[tuple[str, str | int], tuple[str, int]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future[_Entry]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._resolver = self._make_resolver()

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        cfg = self.config
        if cfg.nameservers:
            res = dns.asyncresolver.Resolver(configure=False)
            res.nameservers = list(cfg.nameservers)
        else:
            res = dns.asyncresolver.Resolver()
        res.port = cfg.port
        res.timeout = cfg.timeout
        res.lifetime = cfg.lifetime
        res.cache = None  # ours caches negative answers and errors too
        res.use_edns(0, 0, 1232)  # DNS flag day 2020 size: big TXT arrives over UDP or via TC→TCP
        return res

    # --- typed lookups ------------------------------------------------------------------------

    async def txt(self, name: str) -> list[str]:
        """TXT records, each one's strings joined (RFC 7208 §3.3), decoded as UTF-8 (lossy)."""
        return _txt(await self.query(name, "TXT"))

    async def txt_bytes(self, name: str) -> list[bytes]:
        """TXT records as raw bytes, each one's strings joined with no separator."""
        return _txt_bytes(await self.query(name, "TXT"))

    async def txt_strings(self, name: str) -> list[tuple[bytes, ...]]:
        """TXT records as their separate character-strings (some parsers need the pieces)."""
        return _txt_strings(await self.query(name, "TXT"))

    async def a(self, name: str) -> list[str]:
        return _addresses(await self.query(name, "A"))

    async def aaaa(self, name: str) -> list[str]:
        return _addresses(await self.query(name, "AAAA"))

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs, exchange without the final dot, sorted by preference."""
        return _mx(await self.query(name, "MX"))

    async def ptr(self, ip: str) -> list[str]:
        """Names for an IP address (the reverse lookup), without the final dot."""
        return await self.ptr_name(_reverse_name(ip))

    async def ptr_name(self, name: str) -> list[str]:
        """PTR records of an in-addr.arpa / ip6.arpa name, without the final dot."""
        return _targets(await self.query(name, "PTR"))

    # --- the cached core ----------------------------------------------------------------------

    async def query(self, name: str, rdtype: str | int) -> tuple[dns.rdata.Rdata, ...]:
        """Records of `rdtype` at `name` (CNAMEs followed); () for NODATA.

        Raises DnsNotFound or DnsTempError. Concurrent identical queries share one lookup.
        """
        key = self._key(name, rdtype)
        entry = self._cache.get(key)
        if entry is not None:
            if entry.expires > self._clock():
                return _unwrap(entry)
            del self._cache[key]
        fut = self._inflight.get(key)
        if fut is None:
            # A task of its own, so one caller being cancelled doesn't cancel the others.
            fut = asyncio.ensure_future(
                self._lookup(key, _to_name(name), dns.rdatatype.RdataType.make(rdtype)))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f, k=key: self._inflight.pop(k, None))
        entry = await asyncio.shield(fut)
        return _unwrap(entry)

    def cached(self, name: str, rdtype: str | int) -> tuple[dns.rdata.Rdata, ...] | None:
        """What `query` would answer from the cache alone, at once; None when it would have to
        ask a nameserver (not cached, or expired). Raises the cached error, as `query` does."""
        key = self._key(name, rdtype)
        entry = self._cache.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        return _unwrap(entry)

    def _key(self, name: str, rdtype: str | int) -> tuple[str, int]:
        # The cache key of a name as callers spell it, remembered: parsing the name is most of
        # the cost of a cache hit, and the same few names are asked for again and again.
        key = self._keys.get((name, rdtype))
        if key is None:
            key = _cache_key(_to_name(name), dns.rdatatype.RdataType.make(rdtype))
            if len(self._keys) >= _KEYS_REMEMBERED:
                self._keys.clear()
            self._keys[(name, rdtype)] = key
        return key

    async def _lookup(self, key: tuple[str, int], qname: dns.name.Name,
                      qtype: dns.rdatatype.RdataType) -> _Entry:
        entry = await self._fetch(qname, qtype)
        if self.config.cache_size > 0 and entry.expires > self._clock():
            if len(self._cache) >= self.config.cache_size:
                self._evict()
            self._cache[key] = entry
        return entry

    async def _fetch(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> _Entry:
        cfg = self.config
        now = self._clock()
        try:
            answer = await self._resolver.resolve(qname, qtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(_first_response(exc), cfg)
            return _Entry(now + ttl, error=DnsNotFound(f"{qname}: NXDOMAIN"))
        except dns.resolver.YXDOMAIN as exc:
            return _Entry(now, error=DnsNotFound(f"{qname}: {exc}"))
        except dns.exception.Timeout:
            return _Entry(now + cfg.tempfail_ttl,
                          error=DnsTempError(f"{qname}/{qtype.name}: timeout"))
        except dns.resolver.NoNameservers as exc:
            # SERVFAIL, REFUSED, FORMERR, malformed answers, CNAME chains too long.
            return _Entry(now + cfg.tempfail_ttl,
                          error=DnsTempError(f"{qname}/{qtype.name}: {_short(exc)}"))
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return _Entry(now + cfg.tempfail_ttl,
                          error=DnsTempError(f"{qname}/{qtype.name}: {type(exc).__name__}"))
        if answer.rrset is None:  # NODATA
            return _Entry(now + _negative_ttl(answer.response, cfg))
        ttl = min(max(float(answer.chaining_result.minimum_ttl), cfg.min_ttl), cfg.max_ttl)
        return _Entry(now + ttl, records=tuple(answer.rrset))

    def _evict(self) -> None:
        now = self._clock()
        for k in [k for k, e in self._cache.items() if e.expires <= now]:
            del self._cache[k]
        # Still full: drop the oldest quarter (dicts keep insertion order).
        if len(self._cache) >= self.config.cache_size:
            for k in list(self._cache)[: max(1, len(self._cache) // 4)]:
                del self._cache[k]

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- blocking libraries -------------------------------------------------------------------

    async def run_blocking(self, fn: Callable[["BlockingResolver"], T]) -> T:
        """Run `fn(blocking_resolver)` in a worker thread, off the event loop.

        The blocking resolver's lookups are sent back to this resolver on this loop, so a
        blocking library (pyspf, dkimpy) shares our cache and nameservers. A dedicated pool keeps
        slow DNS inside such libraries from starving the loop's default executor.
        """
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.config.blocking_workers,
                                                thread_name_prefix="dns-blocking")
        return await loop.run_in_executor(self._executor, fn, BlockingResolver(self, loop))

    async def run_cached_first(self, fn: Callable[["SyncLookups"], T]) -> T:
        """`fn(lookups)` at once on the loop when the cache holds every answer it asks for;
        otherwise, from the start, in a worker thread (`run_blocking`).

        Why: a pure-Python library (pyspf) holds the GIL in a worker thread just as on the loop,
        so with answers cached the thread adds only hand-overs: the job to the thread, each
        lookup back to the loop and its answer to the thread again, the result back, each a
        wake-up of a sleeping thread. `fn` must be side-effect free and cheap once its answers
        are cached (it may run twice: first on the cache, then again in the thread); a miss is
        noticed even where the library swallows the error it sees.
        """
        lookups = CachedLookups(self)
        try:
            result = fn(lookups)
        except Exception:
            if lookups.missed is None:
                raise  # the library's own error, as the thread would have met it
        else:
            if lookups.missed is None:
                return result
        return await self.run_blocking(fn)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class SyncLookups:
    """The resolver's typed API, synchronous, over one `query`: what blocking libraries get."""

    def query(self, name: str, rdtype: str | int) -> tuple[dns.rdata.Rdata, ...]:
        raise NotImplementedError

    def txt(self, name: str) -> list[str]:
        return _txt(self.query(name, "TXT"))

    def txt_bytes(self, name: str) -> list[bytes]:
        return _txt_bytes(self.query(name, "TXT"))

    def txt_strings(self, name: str) -> list[tuple[bytes, ...]]:
        return _txt_strings(self.query(name, "TXT"))

    def a(self, name: str) -> list[str]:
        return _addresses(self.query(name, "A"))

    def aaaa(self, name: str) -> list[str]:
        return _addresses(self.query(name, "AAAA"))

    def mx(self, name: str) -> list[tuple[int, str]]:
        return _mx(self.query(name, "MX"))

    def ptr(self, ip: str) -> list[str]:
        return self.ptr_name(_reverse_name(ip))

    def ptr_name(self, name: str) -> list[str]:
        return _targets(self.query(name, "PTR"))


class BlockingResolver(SyncLookups):
    """The typed API callable from a worker thread (never from the event loop itself): each
    lookup is sent to the resolver on its loop and waited for."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop) -> None:
        self._resolver = resolver
        self._loop = loop

    def query(self, name: str, rdtype: str | int) -> tuple[dns.rdata.Rdata, ...]:
        fut = asyncio.run_coroutine_threadsafe(self._resolver.query(name, rdtype), self._loop)
        try:
            # The resolver's own lifetime bounds the lookup; the margin only guards a dead loop.
            return fut.result(timeout=self._resolver.config.lifetime + 2.0)
        except TimeoutError as exc:
            fut.cancel()
            raise DnsTempError("resolver did not answer") from exc


class CachedLookups(SyncLookups):
    """The typed API answered from the resolver's cache alone, on the loop's thread. A lookup
    that is not cached raises DnsTempError and is remembered in `missed`."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self.missed: tuple[str, str | int] | None = None

    def query(self, name: str, rdtype: str | int) -> tuple[dns.rdata.Rdata, ...]:
        records = self._resolver.cached(name, rdtype)
        if records is None:
            self.missed = (name, rdtype)
            raise DnsTempError(f"{name}/{rdtype}: not cached")
        return records


# --- helpers --------------------------------------------------------------------------------------

_KEYS_REMEMBERED = 4096  # spellings of names whose cache key is remembered (then forgotten at once)


def _cache_key(qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> tuple[str, int]:
    return qname.to_text().lower(), int(qtype)


def _to_name(name: str) -> dns.name.Name:
    """An absolute DNS name, or DnsNotFound for text that can't be one (empty or long labels)."""
    if not name or name.strip() != name or _is_ip_literal(name):
        raise DnsNotFound(f"not a DNS name: {name!r}")
    try:
        return dns.name.from_text(name.rstrip(".") + ".") if name != "." else dns.name.root
    except (dns.exception.DNSException, ValueError) as exc:
        raise DnsNotFound(f"not a DNS name: {name!r} ({type(exc).__name__})") from exc


def _is_ip_literal(name: str) -> bool:
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else None
    if text is None:
        return False
    try:
        ipaddress.ip_address(text.removeprefix("IPv6:"))
        return True
    except ValueError:
        return True  # any bracketed text is a literal, never a domain


# The typed answers, one place for the async and the synchronous API.

def _txt(records: tuple[dns.rdata.Rdata, ...]) -> list[str]:
    return [b.decode("utf-8", "replace") for b in _txt_bytes(records)]


def _txt_bytes(records: tuple[dns.rdata.Rdata, ...]) -> list[bytes]:
    return [b"".join(r.strings) for r in records]  # type: ignore[attr-defined]


def _txt_strings(records: tuple[dns.rdata.Rdata, ...]) -> list[tuple[bytes, ...]]:
    return [tuple(r.strings) for r in records]  # type: ignore[attr-defined]


def _addresses(records: tuple[dns.rdata.Rdata, ...]) -> list[str]:
    return [r.address for r in records]  # type: ignore[attr-defined]


def _mx(records: tuple[dns.rdata.Rdata, ...]) -> list[tuple[int, str]]:
    return sorted((r.preference, r.exchange.to_text(omit_final_dot=True))  # type: ignore[attr-defined]
                  for r in records)


def _targets(records: tuple[dns.rdata.Rdata, ...]) -> list[str]:
    return [r.target.to_text(omit_final_dot=True) for r in records]  # type: ignore[attr-defined]


def _reverse_name(ip: str) -> str:
    try:
        return str(dns.reversename.from_address(ip).to_text())
    except (ValueError, dns.exception.SyntaxError) as exc:
        raise DnsNotFound(f"not an IP address: {ip!r}") from exc


def _unwrap(entry: _Entry) -> tuple[dns.rdata.Rdata, ...]:
    if entry.error is not None:
        raise type(entry.error)(*entry.error.args)  # a fresh exception: no shared tracebacks
    return entry.records


def _first_response(exc: dns.resolver.NXDOMAIN) -> dns.message.Message | None:
    try:
        responses = exc.responses()
        return next(iter(responses.values()), None)
    except Exception:  # older/odd NXDOMAIN objects carry no responses
        return None


def _negative_ttl(response: dns.message.Message | None, cfg: DnsConfig) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, capped."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                soa = rrset[0]
                return float(min(rrset.ttl, soa.minimum, cfg.negative_max_ttl))  # type: ignore[attr-defined]
    return min(cfg.negative_default_ttl, cfg.negative_max_ttl)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
