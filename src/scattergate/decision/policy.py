"""The policy table: which finding leads to which verdict, with which reply.

This is the only place where findings become verdicts. The table maps a finding key
("check.result") — or a wildcard "*.result" — to an action and a default reply; the
configuration may override the action (including "observe": log only) and the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from scattergate.model import Accept, Finding, Quarantine, Reject, Reply, Tempfail, Verdict

from scattergate.config import ConfigError, PolicyConfig

ACTIONS = ("reject", "tempfail", "quarantine", "accept", "observe")


@dataclass(frozen=True, slots=True)
class Rule:
    action: str
    reply: Reply


# Default table. Reply texts may use {detail}: the finding's detail (e.g. the downstream's text).
DEFAULT_RULES: dict[str, Rule] = {
    # Relay control (RCPT).
    "relay.denied": Rule("reject", Reply(554, "5.7.1", "Relay access denied")),
    "relay.routing": Rule("reject", Reply(554, "5.7.1", "Sender-specified routing refused: {detail}")),
    "relay.ip_literal": Rule("reject", Reply(554, "5.7.1", "Relay access denied: address literal")),
    "relay.no_route": Rule("reject", Reply(554, "5.7.1", "Relay access denied: no outbound route")),
    # Recipients (RCPT).
    "recipient.unknown": Rule("reject", Reply(550, "5.1.1", "Recipient address rejected: User unknown")),
    "limits.too_many_recipients": Rule("tempfail", Reply(452, "4.5.3", "Too many recipients")),
    "verify.rejected": Rule("reject", Reply(550, "5.1.1", "Recipient address rejected: {detail}")),
    "verify.deferred": Rule(
        "tempfail", Reply(450, "4.1.1", "Recipient address verification failed: {detail}")
    ),
    # Connection limits (CONNECT). 421: the front end closes the connection after it.
    "connection.too_many": Rule("tempfail", Reply(421, "4.7.0", "Too many connections, try again later")),
    # Rate limits (checks/ratelimit.py), shared by the gateways on one state store. RFC 5321
    # §3.8: 421 at connect, then close; §4.3.2 lists 450 for RCPT (not for MAIL, where the
    # message rate is counted only at the first RCPT anyway). RFC 3463 has no subject code for
    # rates: X.7 is policy, 4.7.0 / 4.7.1 as Postfix's anvil limits answer.
    "ratelimit.connections": Rule("tempfail", Reply(421, "4.7.0", "Too many connections from this client, try again later")),
    "ratelimit.messages": Rule("tempfail", Reply(450, "4.7.1", "Too much mail from this client, try again later")),
    "ratelimit.recipients": Rule(
        "tempfail", Reply(450, "4.7.1", "Too many recipients from this sender domain, try again later")
    ),
    # The store failed or was too slow: fail open (checks/ratelimit.py says why); "tempfail"
    # in policy.actions fails closed with this reply.
    "ratelimit.unavailable": Rule("observe", Reply(451, "4.3.0", "Rate limits unavailable, try again later")),
    # Sender authentication. SPF "fail" is the domain owner saying this client may not send
    # for it (RFC 7208 §8.4: 550 5.7.23). DNS trouble decides nothing unless configured to.
    "spf.fail": Rule("reject", Reply(550, "5.7.23", "SPF check failed: {detail}")),
    "spf.temperror": Rule("observe", Reply(451, "4.7.24", "SPF temporary error: {detail}")),
    "spf.permerror": Rule("observe", Reply(550, "5.7.24", "SPF record error: {detail}")),
    "dkim.temperror": Rule("observe", Reply(451, "4.7.5", "DKIM temporary error: {detail}")),
    "dmarc.fail": Rule("observe", Reply(550, "5.7.1", "DMARC policy of the From domain refuses this message")),
    "dmarc.temperror": Rule("observe", Reply(451, "4.7.1", "DMARC temporary error: {detail}")),
    # DNS blocklists (checks/dnsbl.py; off until [dnsbl] zones is set). In safe mode only
    # bounce-like senders are looked up, so a listing refuses only those. The detail names the
    # client and the zone so the sender's admin knows which list to ask (Postfix's wording).
    # An outage of the list refuses nothing unless configured to.
    "dnsbl.listed": Rule("reject", Reply(554, "5.7.1", "Service unavailable; {detail}")),
    "dnsbl.temperror": Rule("observe", Reply(451, "4.7.1", "Service unavailable; DNSBL lookup failed ({detail})")),
    # Backscatter aimed at us: bounces and auto-replies for mail we never sent.
    "batv.invalid": Rule("reject", Reply(550, "5.7.1", "Bounce refused: invalid BATV tag ({detail}); we never sent that mail")),
    "batv.missing": Rule("reject", Reply(550, "5.7.1", "Bounce refused: our mail carries a BATV tag and this address has none")),
    "backscatter.unsolicited": Rule(
        "reject", Reply(550, "5.7.1", "Message refused: bounce or auto-reply for mail we never sent (backscatter)")
    ),
    "backscatter.multiple_recipients": Rule(
        "reject", Reply(550, "5.7.1", "Message refused: a bounce has exactly one recipient (backscatter)")
    ),
    # Content (DATA).
    "smtp.bare_line_ending": Rule(
        "reject", Reply(550, "5.5.2", "Message refused: bare CR or LF in message (RFC 5321 2.3.8)")
    ),
    # Malformed or oversized structure (DATA; checks/structure.py): refused whole, never
    # truncated or repaired on the way through.
    "message.too_large": Rule("reject", Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")),
    "message.header_too_large": Rule("reject", Reply(552, "5.3.4", "Message header too large ({detail})")),
    "message.mime_too_deep": Rule("reject", Reply(554, "5.6.0", "Message refused: MIME nesting too deep ({detail})")),
    "message.nul": Rule("reject", Reply(550, "5.6.0", "Message refused: NUL character in message (RFC 5322 2.3)")),
    # Content scanners (DATA; checks/scanners.py). Refused at end of DATA, never bounced later.
    "clamav.virus": Rule("reject", Reply(554, "5.7.1", "Message refused: virus found ({detail})")),
    "spamd.spam": Rule("reject", Reply(550, "5.7.1", "Message refused as spam")),
    "rspamd.spam": Rule("reject", Reply(550, "5.7.1", "Message refused as spam")),
    "spamd.tagged": Rule("accept", Reply(250, "2.0.0", "OK")),  # X-Spam-Flag; or "quarantine"
    "rspamd.tagged": Rule("accept", Reply(250, "2.0.0", "OK")),
    "rspamd.quarantine": Rule("quarantine", Reply(250, "2.0.0", "OK")),
    "rspamd.deferred": Rule("tempfail", Reply(451, "4.7.1", "Try again later")),
    # A scanner down, erring, garbled or out of its budget (on_failure = "tempfail"); with
    # on_failure = "accept" it reports "skipped" instead, accepted with X-Scan-Skipped.
    "clamav.failed": Rule("tempfail", Reply(451, "4.7.1", "Virus scan unavailable ({detail}), try again later")),
    "spamd.failed": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    "rspamd.failed": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    "clamav.timeout": Rule("tempfail", Reply(451, "4.7.1", "Virus scan unavailable ({detail}), try again later")),
    "spamd.timeout": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    "rspamd.timeout": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    "clamav.error": Rule("tempfail", Reply(451, "4.7.1", "Virus scan unavailable ({detail}), try again later")),
    "spamd.error": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    "rspamd.error": Rule("tempfail", Reply(451, "4.7.1", "Spam scan unavailable ({detail}), try again later")),
    # Any check that ran out of its time budget or broke: never accept-then-bounce.
    "*.timeout": Rule("tempfail", Reply(451, "4.4.3", "Temporary failure ({detail}), try again later")),
    "*.error": Rule("tempfail", Reply(451, "4.3.0", "Temporary failure ({detail}), try again later")),
}

# When several findings decide, the strongest wins: a definite refusal beats a temporary one.
_STRENGTH = {"reject": 4, "tempfail": 3, "quarantine": 2, "accept": 1}


class Decider:
    """Applies the policy table to findings and yields one typed Verdict."""

    def __init__(self, config: "PolicyConfig | None" = None, *, defaults: dict[str, str] | None = None) -> None:
        self._rules = dict(DEFAULT_RULES)
        # Actions another setting implies (e.g. backscatter.mode), below the explicit policy.
        for key, action in (defaults or {}).items():
            self._rules[key] = Rule(action, self._rules[key].reply if key in self._rules else _generic_reply(action))
        if config is not None:
            for key, action in config.actions.items():
                reply = self._rules[key].reply if key in self._rules else _generic_reply(action)
                if not _fits(action, reply):  # e.g. a tempfail rule turned into a reject
                    reply = _generic_reply(action)
                self._rules[key] = Rule(action, reply)
            for key, text in config.replies.items():
                base = self._rules.get(key, Rule("reject", Reply(550, "5.7.1", "Refused")))
                self._rules[key] = Rule(base.action, Reply.parse(text))

    def rule_for(self, finding: Finding) -> Rule | None:
        rule = self._rules.get(finding.key)
        if rule is None:
            rule = self._rules.get(f"*.{finding.result}")
        return rule

    def decide(self, findings: Iterable[Finding], accept: Reply = Reply(250, "2.0.0", "OK")) -> Verdict:
        findings = tuple(findings)
        chosen: tuple[Rule, Finding] | None = None
        for finding in findings:
            rule = self.rule_for(finding)
            if rule is None or rule.action in ("observe", "accept"):
                continue
            if chosen is None or _STRENGTH[rule.action] > _STRENGTH[chosen[0].action]:
                chosen = (rule, finding)
        if chosen is None:
            return Accept(accept, findings)
        rule, finding = chosen
        reply = Reply(rule.reply.code, rule.reply.status, _render(rule.reply.text, finding))
        if rule.action == "reject":
            return Reject(reply, findings)
        if rule.action == "tempfail":
            return Tempfail(reply, findings)
        return Quarantine(accept, findings)


def _render(template: str, finding: Finding) -> str:
    detail = " ".join(finding.detail.split()) or finding.key  # one line, no CR/LF
    return template.replace("{detail}", detail)


def _fits(action: str, reply: Reply) -> bool:
    wanted = {"reject": 5, "tempfail": 4}.get(action)
    return wanted is None or reply.code // 100 == wanted


def _generic_reply(action: str) -> Reply:
    if action == "tempfail":
        return Reply(451, "4.7.1", "Temporary failure, try again later")
    if action == "reject":
        return Reply(550, "5.7.1", "Message refused")
    return Reply(250, "2.0.0", "OK")


def validate_policy(config: PolicyConfig) -> None:
    for key, action in config.actions.items():
        if action not in ACTIONS:
            raise ConfigError(f"policy.actions.{key}: unknown action {action!r} (one of {', '.join(ACTIONS)})")
    for key, text in config.replies.items():
        try:
            reply = Reply.parse(text)
        except (ValueError, IndexError):
            raise ConfigError(f"policy.replies.{key}: not an SMTP reply: {text!r}") from None
        action = config.actions.get(key) or (DEFAULT_RULES[key].action if key in DEFAULT_RULES else "")
        if action == "reject" and reply.code // 100 != 5:
            raise ConfigError(f"policy.replies.{key}: a reject needs a 5xx reply, not {reply.code}")
        if action == "tempfail" and reply.code // 100 != 4:
            raise ConfigError(f"policy.replies.{key}: a tempfail needs a 4xx reply, not {reply.code}")
