"""Sender authentication in the pipeline: SPF at the first RCPT, DKIM and DMARC at end of DATA.

The results are findings for the policy table *and* are kept on the envelope, because the
safe-bounce rule later needs to know whether the sender was proven genuine (the one rule:
decision/sender_proof.py, which reads envelope.spf and envelope.dkim).
"""

from __future__ import annotations

import time

from scattergate.checks import CheckContext
from scattergate.checks.dkim import verify_dkim
from scattergate.checks.dmarc import dmarc_for_message
from scattergate.checks.spf import SpfResult, check_spf
from scattergate.model import Finding
from scattergate.net.dns import Resolver


class SpfCheck:
    """SPF for MAIL FROM (or HELO for the null sender), once per transaction.

    Results are kept for a short time per (client IP, sender, HELO): a busy client sends many
    messages with the same identity, and re-running check_host() for each would redo the same
    (cached) DNS walk in a thread. Temporary errors are never kept.
    """

    RESULT_TTL = 60.0
    MAX_RESULTS = 10_000

    def __init__(self, resolver: Resolver, *, receiver: str, budget: float, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._resolver = resolver
        self._receiver = receiver
        self._budget = budget
        self._clock = clock
        self._results: dict[tuple[str, str, str], tuple[float, SpfResult]] = {}

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        envelope = ctx.envelope
        assert envelope is not None
        if ctx.session.trusted:
            return []  # our own users' outbound mail: SPF of their domains says nothing here
        if envelope.spf is not None:
            return [envelope.spf.finding()]
        key = (ctx.session.client_ip, str(envelope.sender).lower(), ctx.session.helo.lower())
        now = self._clock()
        cached = self._results.get(key)
        if cached is not None and cached[0] > now:
            result = cached[1]
        else:
            result = await check_spf(
                self._resolver, ctx.session.client_ip, str(envelope.sender), ctx.session.helo,
                # A little inside our budget, so slow DNS ends as SPF's own temperror (a finding the
                # policy may ignore) rather than as the runner's timeout (always a tempfail).
                receiver=self._receiver, timeout=max(0.5, self._budget * 0.8),
            )
            if result.result != "temperror":
                if len(self._results) >= self.MAX_RESULTS:
                    self._results.clear()  # bounded memory under a flood of identities
                self._results[key] = (now + self.RESULT_TTL, result)
        envelope.spf = result
        return [result.finding()]


class DkimDmarcCheck:
    """DKIM for every signature, then DMARC for the From domain using SPF and DKIM."""

    def __init__(self, resolver: Resolver, *, dmarc: bool) -> None:
        self._resolver = resolver
        self._dmarc = dmarc

    async def __call__(self, ctx: CheckContext) -> list[Finding]:
        envelope = ctx.envelope
        assert envelope is not None and ctx.content is not None
        if ctx.session.trusted:
            return []
        results = await verify_dkim(self._resolver, ctx.content)
        envelope.dkim = tuple(results)
        findings = [r.finding() for r in results]
        if self._dmarc:
            # No single usable From (none, two, unparsable) is DMARC's own permerror.
            findings.append((await dmarc_for_message(self._resolver, ctx.content, envelope.spf, results)).finding())
        return findings
