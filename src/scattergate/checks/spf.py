"""SPF (RFC 7208) for the MAIL FROM and HELO identities, as findings.

The evaluation is pyspf's; only its DNS is ours. pyspf is blocking: when our cache holds
every record the check needs (the usual case: the same few domains send again and again) it
runs at once on the event loop; otherwise in a worker thread whose lookups come back through
our cached async resolver on the loop (`Resolver.run_cached_first`). Either way the configured
nameservers, timeouts and cache apply to SPF too.

pyspf looks names up through its module-level `spf.DNSLookup`. We replace it once with a
dispatcher that uses the resolver bound to the *current thread's context* and falls back to
pyspf's own lookup otherwise, so other users of pyspf in the process are unaffected.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable

import spf

from scattergate.logfmt import fields
from scattergate.model import Finding
from scattergate.net.dns import DnsNotFound, DnsTempError, Resolver, SyncLookups

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

# RFC 7208 §4.6.4: the whole check may be bounded; at least 20 s is recommended.
DEFAULT_TIMEOUT = 20.0
# A property value with white space or ";" would split the Authentication-Results clause.
_NOT_A_PVALUE = re.compile(r"[\s;]")
_MAX_IDENTITY = 1024  # far beyond RFC 5321's 256-octet path: only absurd input is refused

_current: contextvars.ContextVar[SyncLookups | None] = contextvars.ContextVar(
    "scattergate_spf_resolver", default=None)


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check, with what DMARC and Authentication-Results need."""

    result: str
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain whose policy was evaluated
    sender: str  # the checked <sender> (postmaster@helo for the HELO identity)
    ip: str
    explanation: str = ""  # exp= text for fail; the problem for temperror/permerror
    mechanism: str = ""

    @property
    def check(self) -> str:
        return "spf" if self.identity == "mailfrom" else "spf_helo"

    def finding(self) -> Finding:
        prop = "smtp.mailfrom" if self.identity == "mailfrom" else "smtp.helo"
        value = self.sender if self.identity == "mailfrom" else self.domain
        if not value or _NOT_A_PVALUE.search(value):
            value = self.domain
        parts = [f"{prop}={value}" if value else "", f"ip={self.ip}" if self.ip else ""]
        if self.mechanism:
            parts.append(f"mech={self.mechanism}")
        detail = " ".join(p for p in parts if p)
        if self.explanation and self.result in ("fail", "temperror", "permerror"):
            detail += f"; {self.explanation}"
        return Finding(self.check, self.result, detail)


async def check_spf(resolver: Resolver, ip: str, mail_from: str, helo: str, *,
                    receiver: str = "", timeout: float = DEFAULT_TIMEOUT,
                    default_explanation: str | None = None) -> SpfResult:
    """check_host() for the MAIL FROM identity; a null sender checks postmaster@<helo>
    (RFC 7208 §2.4), reported as the HELO identity."""
    if not mail_from:
        return await check_helo(resolver, ip, helo, receiver=receiver, timeout=timeout,
                                default_explanation=default_explanation)
    domain = mail_from.rpartition("@")[2]
    return await _run(resolver, ip, mail_from, helo, "mailfrom", domain, receiver, timeout,
                      default_explanation)


async def check_helo(resolver: Resolver, ip: str, helo: str, *, receiver: str = "",
                     timeout: float = DEFAULT_TIMEOUT,
                     default_explanation: str | None = None) -> SpfResult:
    """check_host() for the HELO identity (RFC 7208 §2.3)."""
    sender = f"postmaster@{helo}" if helo else ""
    return await _run(resolver, ip, sender, helo, "helo", helo, receiver, timeout,
                      default_explanation)


async def spf_findings(resolver: Resolver, ip: str, mail_from: str, helo: str,
                       **kwargs: Any) -> list[Finding]:
    """Convenience for the pipeline: the MAIL FROM (or null-sender HELO) finding."""
    return [(await check_spf(resolver, ip, mail_from, helo, **kwargs)).finding()]


async def _run(resolver: Resolver, ip: str, sender: str, helo: str, identity: str, domain: str,
               receiver: str, timeout: float, default_explanation: str | None) -> SpfResult:
    def outcome(result: str, explanation: str = "", mechanism: str = "") -> SpfResult:
        return SpfResult(result, identity, domain, sender, ip, explanation, mechanism)

    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return outcome("permerror", f"invalid client IP {ip[:64]!r}")
    if len(sender) > _MAX_IDENTITY or len(helo) > _MAX_IDENTITY:
        return outcome("permerror", "identity too long")
    if not domain:
        return outcome("none", "no domain to check")

    def evaluate(dns: SyncLookups) -> SpfResult:
        token = _current.set(dns)
        try:
            q = _Query(i=ip, s=sender, h=helo, receiver=receiver or "unknown",
                       timeout=timeout, querytime=timeout)
            if default_explanation is not None:
                q.set_default_explanation(default_explanation)
            result, _code, explanation = q.check()
            mech = q.mechanism if isinstance(q.mechanism, str) else ""
            return outcome(str(result), str(explanation or ""), mech)
        finally:
            _current.reset(token)

    try:
        res = await resolver.run_cached_first(evaluate)
    except Exception as exc:  # a library bug must not take the session down; retry later
        log.exception("SPF evaluation failed: %s", fields(sender=sender, helo=helo, client=ip))
        return outcome("temperror", f"internal error: {type(exc).__name__}")
    if res.result not in RESULTS:
        return outcome("temperror", f"unexpected SPF result {res.result!r}")
    return res


class _Query(spf.query):  # type: ignore[misc]
    """pyspf's query, with RFC 7208 §5.5 for ptr: a name whose address lookup fails is
    skipped ("the search continues"), not turned into a temperror for the whole check."""

    def validated_ptrs(self) -> list[str]:
        if self.strict > 1:
            return super().validated_ptrs()  # type: ignore[no-any-return]
        valid: list[str] = []
        for name in self.dns_ptr(self.i)[: spf.MAX_PTR]:
            try:
                addresses = self.dns_a(name, self.A)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                valid.append(name)
        return valid


# --- pyspf's DNS hook --------------------------------------------------------------------------

_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


def _lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[tuple[Any, Any]]:
    """pyspf's DNSLookup contract: [((name, type), value), ...]; values are str for A/AAAA/PTR,
    (preference, exchange) for MX and a tuple of byte strings for TXT/SPF."""
    dns = _current.get()
    if dns is None:
        return _pyspf_lookup(name, qtype, strict, timeout)  # type: ignore[no-any-return]
    key = (name, qtype)
    try:
        if qtype == "A":
            return [(key, v) for v in dns.a(name)]
        if qtype == "AAAA":
            return [(key, v) for v in dns.aaaa(name)]
        if qtype == "MX":
            return [(key, v) for v in dns.mx(name)]
        if qtype == "PTR":
            return [(key, v) for v in dns.ptr_name(name)]
        if qtype in ("TXT", "SPF"):
            return [(key, tuple(r.strings)) for r in dns.query(name, qtype)]  # type: ignore[attr-defined]
        return []
    except DnsNotFound:
        return []
    except DnsTempError as exc:
        raise spf.TempError(f"DNS {exc}") from exc


spf.DNSLookup = _lookup
