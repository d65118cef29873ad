"""Per-message limits that are decisions rather than protocol errors."""

from __future__ import annotations

from scattergate.checks import CheckContext
from scattergate.model import Finding


class RecipientLimit:
    """RFC 5321 §4.5.3.1.8: past the limit, 452 tells the client to send the rest later."""

    def __init__(self, max_recipients: int) -> None:
        self._max = max_recipients

    def __call__(self, ctx: CheckContext) -> list[Finding]:
        assert ctx.envelope is not None
        if len(ctx.envelope.recipients) >= self._max:
            return [Finding("limits", "too_many_recipients", f"max {self._max}")]
        return []
