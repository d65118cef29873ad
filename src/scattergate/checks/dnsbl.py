"""DNS blocklists (DNSBL, RFC 5782) at RCPT, by default in "safe mode".

Backscatterer.org's ips.backscatterer.org lists the IPs that send backscatter. Its documented
safe mode uses it only against *bounces and auto-replies* (null sender, postmaster@,
mailer-daemon@): a listed server's ordinary mail is not refused. In that mode we do not even
look ordinary senders up — an answer that cannot matter would still leak the client's address
to a third party and spend the list's free query quota.

The client is looked up once per transaction (the findings are kept on the envelope), in every
configured zone concurrently. The answer is interpreted, not decided on: `dnsbl.listed`,
`dnsbl.temperror`, `dnsbl.refused` are findings and the policy table decides.

Return codes: an A record in 127.0.0.0/8 means listed, except 127.255.255.0/24, which
Spamhaus-style lists use to say "your query was refused" (252: malformed query, 254: asked
through a public resolver, 255: too many queries) — never a listing. Records outside 127/8
(a wildcard of an expired list domain, a resolver rewriting NXDOMAIN) mean "not listed".
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import re
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from scattergate.address import Address
from scattergate.checks import CheckContext
from scattergate.model import Finding
from scattergate.net.dns import DnsError, DnsNotFound, DnsTempError, Resolver

log = logging.getLogger(__name__)

MODES = ("safe", "all")
BOUNCE_LOCALS = frozenset({"postmaster", "mailer-daemon"})

_LISTING = ipaddress.IPv4Network("127.0.0.0/8")
_REFUSAL = ipaddress.IPv4Network("127.255.255.0/24")
_ZONE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))+\.?$")
# The list's TXT goes into our SMTP reply: printable ASCII only, and short.
_TXT_LIMIT = 200
# Refusal codes mean our resolver or volume is the problem: say so, but not once per client.
_WARN_EVERY = 60.0


def valid_zone(zone: str) -> bool:
    """A DNS name with at least two labels (a list's zone, never a bare TLD or an address)."""
    return len(zone) <= 200 and bool(_ZONE.match(zone)) and not _is_ip(zone.rstrip("."))


def query_name(ip: str, zone: str) -> str | None:
    """The name to ask for `ip` in `zone`: 'd.c.b.a.zone' for IPv4, 32 reversed nibbles for
    IPv6 (RFC 5782 §2.4). An IPv4-mapped IPv6 address is asked as IPv4. None: not an IP."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        labels = str(address).split(".")
    else:
        labels = list(address.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.rstrip(".").lower()


class Status(enum.Enum):
    LISTED = "listed"
    NOT_LISTED = "not_listed"
    REFUSED = "refused"  # 127.255.255.x: the list did not answer our question


@dataclass(frozen=True, slots=True)
class Interpretation:
    status: Status
    codes: tuple[str, ...] = ()  # the listing (or refusal) codes, sorted
    ignored: tuple[str, ...] = ()  # records outside 127/8


def interpret(addresses: Sequence[str]) -> Interpretation:
    """What a zone's A records say. Any listing code wins over refusal codes beside it."""
    listed: list[ipaddress.IPv4Address] = []
    refused: list[ipaddress.IPv4Address] = []
    ignored: list[str] = []
    for text in addresses:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            ignored.append(text)
            continue
        if address in _REFUSAL:
            refused.append(address)
        elif address in _LISTING:
            listed.append(address)
        else:
            ignored.append(text)
    if listed:
        return Interpretation(Status.LISTED, tuple(str(a) for a in sorted(set(listed))), tuple(ignored))
    if refused:
        return Interpretation(Status.REFUSED, tuple(str(a) for a in sorted(set(refused))), tuple(ignored))
    return Interpretation(Status.NOT_LISTED, (), tuple(ignored))


def is_bounce_like(sender: Address) -> bool:
    """Null sender, postmaster@ or mailer-daemon@: what bounces and auto-replies come from."""
    return sender.is_null or sender.unquoted_local.lower() in BOUNCE_LOCALS


def printable(text: str, limit: int = _TXT_LIMIT) -> str:
    """Third-party text made safe for one SMTP reply line: printable ASCII, one space, short."""
    cleaned = " ".join("".join(c if " " <= c <= "~" else " " for c in text).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class DnsblCheck:
    """The RCPT-phase DNSBL lookup; a `RemoteRun` for `RemoteCheck("dnsbl", ...)`."""

    def __init__(self, resolver: Resolver, zones: Sequence[str], *, mode: str = "safe",
                 budget: float = 3.0, txt: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"dnsbl mode must be one of {MODES}, not {mode!r}")
        self._resolver = resolver
        self._zones = tuple(dict.fromkeys(z.rstrip(".").lower() for z in zones))
        self._mode = mode
        # Inside the runner's budget, so DNS trouble ends as our own temperror (observed by
        # default) and not as the runner's `dnsbl.timeout` (a tempfail).
        self._deadline = max(0.1, budget * 0.8)
        self._txt = txt
        self._clock = clock
        self._warned: dict[str, float] = {}

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        envelope = ctx.envelope
        assert envelope is not None
        if ctx.session.trusted or not self._zones:
            return []
        bounce = is_bounce_like(envelope.sender)
        if self._mode == "safe" and not bounce:
            return []
        if envelope.dnsbl is None:
            envelope.dnsbl = tuple(await self.lookup(ctx.session.client_ip))
        findings = list(envelope.dnsbl)
        if bounce and any(f.key == "batv.valid" for f in ctx.earlier):
            # A bounce to a valid BATV address is proven to be about mail we sent: a listed
            # server's genuine bounce still reaches our user.
            findings = [Finding("dnsbl", "exempt", f"{f.detail}; valid BATV tag") if f.result == "listed" else f
                        for f in findings]
        return findings

    async def lookup(self, ip: str) -> list[Finding]:
        """Findings for `ip` in every zone, asked concurrently; [] when no zone lists it."""
        names = [(zone, query_name(ip, zone)) for zone in self._zones]
        if any(name is None for _, name in names):
            return []  # "unknown" or garbage from a front end: nothing to look up
        deadline = asyncio.get_running_loop().time() + self._deadline
        results = await asyncio.gather(*(self._zone(ip, zone, name, deadline) for zone, name in names if name))
        return [f for result in results for f in result]

    async def _zone(self, ip: str, zone: str, name: str, deadline: float) -> list[Finding]:
        try:
            async with asyncio.timeout_at(deadline):
                records = await self._resolver.a(name)
        except DnsNotFound:
            return []
        except DnsTempError as exc:
            return [Finding("dnsbl", "temperror", f"{zone}: {exc}")]
        except TimeoutError:
            return [Finding("dnsbl", "temperror", f"{zone}: no answer within {self._deadline:g} s")]
        answer = interpret(records)
        if answer.ignored:
            log.warning("dnsbl %s: ignoring non-127/8 answer %s for %s (expired list or rewriting resolver?)",
                        zone, ",".join(answer.ignored), ip)
        if answer.status is Status.REFUSED:
            self._warn_refused(zone, answer.codes)
            return [Finding("dnsbl", "refused", f"{zone}: {','.join(answer.codes)}")]
        if answer.status is Status.NOT_LISTED:
            return []
        detail = f"client [{ip}] listed at {zone} ({','.join(answer.codes)}"
        text = await self._reason(name, deadline) if self._txt else ""
        return [Finding("dnsbl", "listed", detail + (f": {text})" if text else ")"))]

    async def _reason(self, name: str, deadline: float) -> str:
        """The list's TXT for a listed address, if it answers in time: the sender's admin reads
        it in our reply (usually a removal URL). Missing or slow TXT loses only the text."""
        try:
            async with asyncio.timeout_at(deadline):
                texts = await self._resolver.txt(name)
        except (DnsError, TimeoutError):
            return ""
        return printable(texts[0]) if texts else ""

    def _warn_refused(self, zone: str, codes: tuple[str, ...]) -> None:
        now = self._clock()
        if now - self._warned.get(zone, -_WARN_EVERY) < _WARN_EVERY:
            return
        self._warned[zone] = now
        log.warning(
            "dnsbl %s refused our queries (%s): treated as not listed. 127.255.255.254 means a "
            "public or shared resolver was used, 127.255.255.255 too many queries: use a local "
            "resolver ([dns] nameservers) or the list's paid feed", zone, ",".join(codes),
        )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
