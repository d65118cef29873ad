"""Relay control: mail for domains we don't receive for is refused unless the client is trusted.

Also refuses the classic relay tricks, which would let a downstream MTA relay onwards even
though the address *looks* local: percent hack, bang paths, source routes, quoted local parts
holding '@', and IP-literal domains. Neither the sender (our own hostname, the null sender)
nor HELO ever grants relaying: only the client's address does.
"""

from __future__ import annotations

from typing import Iterable

from scattergate.checks import CheckContext
from scattergate.model import Finding


class RelayCheck:
    def __init__(self, domains: Iterable[str], *, outbound_route: bool) -> None:
        self._domains = frozenset(d.lower() for d in domains)
        self._outbound_route = outbound_route

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def __call__(self, ctx: CheckContext) -> list[Finding]:
        rcpt = ctx.recipient
        assert rcpt is not None
        trusted = ctx.session.trusted
        if not trusted:
            if rcpt.route:
                return [Finding("relay", "routing", "source route")]
            local = rcpt.unquoted_local
            for char, name in (("@", "'@' in local part"), ("%", "percent hack"), ("!", "bang path")):
                if char in local:
                    return [Finding("relay", "routing", name)]
            if rcpt.is_ip_literal:
                return [Finding("relay", "ip_literal", rcpt.domain)]
        if self.is_local(rcpt.domain):
            return []
        if not trusted:
            return [Finding("relay", "denied", rcpt.domain)]
        if not self._outbound_route:
            return [Finding("relay", "no_route", rcpt.domain)]
        return [Finding("relay", "outbound", rcpt.domain)]
