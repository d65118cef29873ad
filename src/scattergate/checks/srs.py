"""SRS at RCPT (Postfix integration): is a recipient in our SRS domain one we signed?

A bounce for mail we forwarded comes back to the SRS address we put in its sender. A valid
SRS signature proves that mail went through us, as a valid BATV tag does for our own mail:
`srs.valid` is evidence for the backscatter check. The address itself is reversed by Postfix
(the socketmap's `reverse` map); this check only observes.
"""

from __future__ import annotations

import time

from scattergate.checks import CheckContext
from scattergate.model import Finding
from scattergate.rewrite import srs
from scattergate.rewrite.keys import SrsSecrets


class SrsRecipientCheck:
    def __init__(self, domain: str, secrets: SrsSecrets, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self.domain = domain.lower()
        self.secrets = secrets
        self._clock = clock

    def __call__(self, ctx: CheckContext) -> list[Finding]:
        rcpt = ctx.recipient
        assert rcpt is not None
        if rcpt.domain.lower() != self.domain:
            return []
        result = srs.reverse(str(rcpt), self.secrets, int(self._clock() // 86400))
        if result.ok:
            return [Finding("srs", "valid", str(result.address))]
        return [Finding("srs", "invalid", str(result.reason))]
