"""DMARC (RFC 7489): policy discovery, identifier alignment and the result, as a finding.

Organisational domains and identifier alignment live in `scattergate.orgdomain` (pure, shared
with the sender-proof rule); they are re-exported here for DMARC's callers.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from typing import Sequence

from scattergate.checks.dkim import DkimResult
from scattergate.checks.spf import SpfResult
from scattergate.model import Finding
from scattergate.net.dns import DnsNotFound, DnsTempError, Resolver
from scattergate.orgdomain import aligned, normalize, organizational_domain  # noqa: F401 (re-exported)

RESULTS = ("pass", "fail", "none", "temperror", "permerror")
POLICIES = ("none", "quarantine", "reject")

_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)")
_MAX_RECORD = 4096  # DMARC records are short; longer is abuse
_FROM_FIELD = re.compile(rb"^from[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
# A From value that is one dot-atom address (RFC 5322 §3.4.1), bare or in <>, nothing else.
_DOT_ATOM_ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_FROM = re.compile(rf"[ \t]*(?:<({_DOT_ATOM_ADDRESS})>|({_DOT_ATOM_ADDRESS}))[ \t]*")


class DmarcRecordError(ValueError):
    """A DMARC record that cannot be used (no valid p= and no rua=)."""


@dataclass(frozen=True, slots=True)
class DmarcPolicy:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: str = ""


def parse_record(text: str) -> DmarcPolicy:
    """Parse a DMARC TXT record (RFC 7489 §6.3). Bad optional tags fall back to defaults
    (§6.3 says to discard them); a missing/invalid p= is an error unless rua= is present, in
    which case the record counts as p=none (§6.6.3 step 6)."""
    if len(text) > _MAX_RECORD:
        raise DmarcRecordError("record too long")
    if not _VERSION.match(text):
        raise DmarcRecordError("not a DMARC1 record")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq:
            continue  # junk between semicolons is ignored, like an unknown tag
        tags.setdefault(name.strip().lower(), value.strip())
    rua = tags.get("rua", "")
    rua_ok = any(u.strip().lower().startswith(("mailto:", "https:", "http:"))
                 for u in rua.split(","))
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        if not rua_ok:
            raise DmarcRecordError(f"invalid policy p={tags.get('p', '')!r}"
                                   + (f" sp={tags['sp']!r}" if "sp" in tags else ""))
        p = "none" if p not in POLICIES else p
        sp = p if sp not in POLICIES else sp
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcPolicy(p=p, sp=sp, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r",
                       pct=pct if 0 <= pct <= 100 else 100, rua=rua if rua_ok else "")


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str
    from_domain: str = ""
    policy_domain: str = ""  # where the record was found (the From or its organisational domain)
    policy: DmarcPolicy | None = None
    aligned_by: tuple[str, ...] = ()  # "dkim", "spf"
    reason: str = ""

    @property
    def requested(self) -> str:
        """The policy the domain owner asks for this message (sp= for subdomains)."""
        if self.policy is None:
            return ""
        if self.policy_domain and normalize(self.from_domain) != self.policy_domain:
            return self.policy.sp
        return self.policy.p

    def finding(self) -> Finding:
        parts = [f"header.from={self.from_domain}" if self.from_domain else ""]
        if self.policy is not None:
            parts += [f"p={self.policy.p}", f"sp={self.policy.sp}",
                      f"policy={self.requested}"]
            if self.policy.pct != 100:
                parts.append(f"pct={self.policy.pct}")
        if self.aligned_by:
            parts.append("aligned=" + ",".join(self.aligned_by))
        detail = " ".join(p for p in parts if p)
        if self.reason:
            detail = f"{detail}; {self.reason}" if detail else self.reason
        return Finding("dmarc", self.result, detail)


async def lookup_policy(resolver: Resolver, from_domain: str
                        ) -> tuple[str, DmarcPolicy] | DmarcResult:
    """Policy discovery (RFC 7489 §6.6.3): _dmarc.<From domain>, then _dmarc.<org domain>.
    Returns (where found, policy), or a none/temperror/permerror result."""
    domain = normalize(from_domain)
    candidates = [domain]
    org = organizational_domain(domain)
    if org and org != domain:
        candidates.append(org)
    for where in candidates:
        try:
            records = [r for r in await resolver.txt(f"_dmarc.{where}") if _VERSION.match(r)]
        except DnsNotFound:
            records = []
        except DnsTempError as exc:
            return DmarcResult("temperror", from_domain, where, reason=f"DNS: {exc}")
        if not records:
            continue
        if len(records) > 1:
            return DmarcResult("permerror", from_domain, where,
                               reason=f"{len(records)} DMARC records at _dmarc.{where}")
        try:
            return where, parse_record(records[0])
        except DmarcRecordError as exc:
            return DmarcResult("permerror", from_domain, where, reason=str(exc))
    return DmarcResult("none", from_domain, reason="no DMARC record")


async def check_dmarc(resolver: Resolver, from_domain: str, spf: SpfResult | None,
                      dkim: Sequence[DkimResult]) -> DmarcResult:
    """The DMARC result for a message whose RFC5322.From domain is `from_domain`, given the
    SPF result (MAIL FROM, or HELO for a null sender) and the DKIM results."""
    domain = normalize(from_domain)
    if not domain or not re.fullmatch(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9])?", domain) \
            or ".." in domain:
        return DmarcResult("permerror", from_domain[:255], reason="no usable From domain")
    found = await lookup_policy(resolver, domain)
    if isinstance(found, DmarcResult):
        return found
    where, policy = found
    by: list[str] = []
    if any(r.result == "pass" and aligned(r.domain, domain, policy.adkim == "s") for r in dkim):
        by.append("dkim")
    if spf is not None and spf.result == "pass" and aligned(spf.domain, domain,
                                                            policy.aspf == "s"):
        by.append("spf")
    return DmarcResult("pass" if by else "fail", domain, where, policy, tuple(by))


class FromHeaderError(ValueError):
    """The message has no single RFC5322.From domain to evaluate."""


def header_from_domain(message: bytes) -> str:
    """The domain of the single author address in From: (RFC 7489 §6.6.1)."""
    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if len(head) > 1024 * 1024:
        raise FromHeaderError("header block too large")
    # Every message asks: a pattern over the header block, not the stdlib parser (ten times
    # the cost). A field may be folded anywhere, even right after the colon.
    values = _FROM_FIELD.findall(head)
    if len(values) != 1:
        raise FromHeaderError(f"{len(values)} From header fields")
    text = _FOLD.sub(b" ", values[0]).decode("utf-8", "replace")
    simple = _SIMPLE_FROM.fullmatch(text)
    # The usual From: one plain address, bare or in angle brackets: its domain is plain to
    # see, without the address-list parser (most of this function's cost).
    addresses = [simple[1] or simple[2]] if simple else [a for _, a in email.utils.getaddresses([text]) if a]
    if len(addresses) != 1:
        raise FromHeaderError(f"{len(addresses)} From addresses")
    domain = addresses[0].rpartition("@")[2]
    if not domain or "@" not in addresses[0]:
        raise FromHeaderError("From address has no domain")
    return normalize(domain)


async def dmarc_for_message(resolver: Resolver, message: bytes, spf: SpfResult | None,
                            dkim: Sequence[DkimResult]) -> DmarcResult:
    """check_dmarc() with the From domain taken from the message; bad From → permerror."""
    try:
        domain = header_from_domain(message)
    except FromHeaderError as exc:
        return DmarcResult("permerror", reason=str(exc))
    return await check_dmarc(resolver, domain, spf, dkim)
