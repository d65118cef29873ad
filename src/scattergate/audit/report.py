"""What the audit found: one result per test, the overall verdict and its exit code, and the
two renderings (a human report and JSON). Pure: no sockets here."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from .probe import Reply, displayable


class Status(enum.StrEnum):
    PASS = "PASS"
    RISK = "RISK"  # the server behaves like a backscatter source
    SKIPPED = "SKIPPED"  # not run: nothing to learn, or the audit lacks what it needs
    ERROR = "ERROR"  # could not be completed (refused connection, timeout, 4xx that stays)
    INCONCLUSIVE = "INCONCLUSIVE"  # completed, but refused for a reason other than the recipient


# Exit codes (also in docs/audit.md).
SAFE, RISK_FOUND, INCOMPLETE = 0, 1, 2
_NO_EVIDENCE = (Status.ERROR, Status.INCONCLUSIVE, Status.SKIPPED)


@dataclass(slots=True)
class BounceSeen:
    """A message that reached the audit's listener, classified."""
    sender: str
    peer: str
    kind: str
    confidence: float
    status_codes: tuple[str, ...]
    names_probe: bool  # it carries our probe's token: surely about our message
    size: int


@dataclass(slots=True)
class CheckResult:
    name: str
    title: str
    status: Status
    explanation: str
    replies: list[Reply] = field(default_factory=list)
    bounce: BounceSeen | None = None


@dataclass(slots=True)
class AuditReport:
    server: str
    domain: str
    tests: list[CheckResult]

    @property
    def exit_code(self) -> int:
        # A risk seen is a finding even if another test could not finish.
        if any(t.status is Status.RISK for t in self.tests):
            return RISK_FOUND
        # Safe only when every test ran and gave evidence: a refusal for our HELO name or
        # sender is none, and a test not run (after-queue without a listener) proves nothing.
        if any(t.status in _NO_EVIDENCE for t in self.tests):
            return INCOMPLETE
        return SAFE

    @property
    def verdict(self) -> str:
        return {SAFE: "safe", RISK_FOUND: "backscatter risk", INCOMPLETE: "incomplete"}[self.exit_code]


def render_text(report: AuditReport) -> str:
    lines = [f"scattergate audit of {report.server} for domain {report.domain}"]
    banner = next((r for t in report.tests for r in t.replies if r.command == "connect"), None)
    if banner is not None:
        lines.append(f"greeting: {banner.code} {' '.join(banner.text.split())}")
    lines.append("")
    for test in report.tests:
        lines.append(f"{test.status.value:<12} {test.title}: {test.explanation}")
        for reply in test.replies:
            if not (_greeting(reply) and reply.accepted):  # the same each time; JSON keeps them
                lines.append(f"{'':13}{reply}")
        if test.bounce is not None:
            b = test.bounce
            codes = ", ".join(b.status_codes) or "none"
            lines.append(f"{'':13}bounce from {b.peer}, MAIL FROM:<{b.sender}>, {b.size} bytes: "
                         f"{b.kind} (confidence {b.confidence:.2f}), status {codes}, "
                         f"{'names' if b.names_probe else 'does not name'} our probe")
    risks = sum(t.status is Status.RISK for t in report.tests)
    missing = [t for t in report.tests if t.status in _NO_EVIDENCE]
    lines.append("")
    if risks:
        lines.append(f"Verdict: BACKSCATTER RISK ({risks} of {len(report.tests)} tests): "
                     "refuse during the SMTP dialogue (at RCPT, or at the end of DATA) what would "
                     "fail later, and bounce only to senders proven genuine.")
    elif missing:
        lines.append(f"Verdict: INCOMPLETE (not run or no evidence about recipients: "
                     f"{', '.join(t.name for t in missing)}); no risk seen so far.")
    else:
        lines.append("Verdict: SAFE: unknown recipients are refused during the SMTP dialogue, and "
                     "accepted mail did not bounce.")
    return "\n".join(displayable(line) for line in lines)


def _greeting(reply: Reply) -> bool:
    return reply.command == "connect" or reply.command.startswith(("EHLO ", "HELO "))


def to_json(report: AuditReport) -> str:
    def test(t: CheckResult) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": t.name, "status": t.status.value, "explanation": t.explanation,
            "replies": [{"command": r.command, "code": r.code, "text": r.text} for r in t.replies],
        }
        if t.bounce is not None:
            b = t.bounce
            item["bounce"] = {"sender": b.sender, "peer": b.peer, "kind": b.kind,
                              "confidence": b.confidence, "status_codes": list(b.status_codes),
                              "names_probe": b.names_probe, "size": b.size}
        return item

    return json.dumps({"server": report.server, "domain": report.domain, "verdict": report.verdict,
                       "exit_code": report.exit_code, "tests": [test(t) for t in report.tests]},
                      indent=2)
