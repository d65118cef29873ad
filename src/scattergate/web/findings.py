"""Finding keys explained in words, for the dashboard.

A decision's findings are kept as text ("spf.fail[...]", "dnsbl.listed(+2)[...]"); an operator
should not need the source to know what `batv.missing` means. Every key in the policy table has
a sentence here (a unit test holds us to it); other keys fall back to what their check and
result say in general.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Findings by which we refuse (or hold) bounces and auto-replies for mail we never sent
# (docs/backscatter.md). The one list the metrics and the dashboard count backscatter by.
BACKSCATTER_FINDINGS = frozenset({
    "backscatter.unsolicited", "backscatter.multiple_recipients",
    "batv.missing", "batv.bad_tag", "batv.invalid", "batv.unsigned",
})

EXPLAINED: dict[str, str] = {
    "relay.denied": "The recipient is not in a domain we receive for, and the client may not relay.",
    "relay.routing": "The address asks for source routing or a %-hack through us; refused as a relay attempt.",
    "relay.ip_literal": "The recipient is an address literal ([192.0.2.1]); we do not relay to those.",
    "relay.no_route": "A trusted client may relay, but no outbound route is configured.",
    "relay.outbound": "A trusted client relaying out: our own users' mail.",
    "recipient.unknown": "No such recipient in our recipient list: refused at RCPT instead of bounced later.",
    "limits.too_many_recipients": "More recipients in one message than allowed; the client sends the rest later.",
    "verify.rejected": "The downstream server said this recipient does not exist (asked at RCPT).",
    "verify.deferred": "The downstream server could not confirm the recipient now; the client retries.",
    "connection.too_many": "Too many connections at once (from this client or in total).",
    "ratelimit.connections": "This client opened connections faster than its rate limit.",
    "ratelimit.messages": "This client sent messages faster than its rate limit.",
    "ratelimit.recipients": "This sender domain reached its recipient rate limit.",
    "ratelimit.unavailable": "The rate-limit store did not answer; the limit was not applied (fail open).",
    "spf.fail": "The sender's domain publishes SPF and says this client may not send for it.",
    "spf.temperror": "SPF could not be checked: a DNS lookup failed for now.",
    "spf.permerror": "The sender domain's SPF record is broken.",
    "dkim.temperror": "A DKIM signature could not be checked: its key lookup failed for now.",
    "dmarc.fail": "The From domain's DMARC policy asks to refuse mail that fails SPF and DKIM alignment.",
    "dmarc.temperror": "DMARC could not be checked: a DNS lookup failed for now.",
    "dmarc.permerror": "The From domain's DMARC record is broken.",
    "dnsbl.listed": "The client's address is on a DNS blocklist we ask.",
    "dnsbl.temperror": "A DNS blocklist did not answer; nothing was decided from it.",
    "dnsbl.exempt": "The client is exempt from the DNS blocklists.",
    "dnsbl.refused": "A DNS blocklist refused to answer (e.g. a public resolver); nothing was decided from it.",
    "batv.invalid": "A bounce to a BATV-tagged address whose tag is wrong or expired: not for mail we sent.",
    "batv.bad_tag": "A bounce to a BATV-tagged address whose tag does not verify: not for mail we sent.",
    "batv.missing": "A bounce to an address without a BATV tag, although all our mail carries one: backscatter.",
    "batv.unsigned": "A bounce to an address of a domain we sign, without a tag: backscatter.",
    "batv.valid": "A bounce whose BATV tag verifies: it answers mail we really sent.",
    "backscatter.unsolicited": "A bounce or auto-reply that refers to no message we sent: backscatter.",
    "backscatter.multiple_recipients": "A bounce addressed to several recipients; a real bounce has exactly one.",
    "backscatter.solicited": "A bounce or auto-reply that refers to a message we sent: let through.",
    "smtp.bare_line_ending": "A bare CR or LF in the message, as SMTP smuggling uses (RFC 5321 2.3.8).",
    "message.header_too_large": "The message header is larger than the limit.",
    "message.mime_too_deep": "MIME parts nested deeper than the limit.",
    "message.nul": "A NUL character in the message (RFC 5322 forbids it).",
    "message.too_large": "The message is larger than the SIZE limit.",
    "message.line_too_long": "A line longer than 998 characters (RFC 5322 2.1.1).",
    "session.timeout": "The client was too slow and was cut off (421).",
    "session.too_many_commands": "The client sent too many commands without sending mail (421).",
    "delivery.relayed": "Relayed to the downstream server inside the SMTP dialogue.",
    "delivery.refused": "The downstream server refused or could not take the message; its reply went back to the client.",
    "quarantine.released": "An operator let the held message out (NOTIFY=NEVER, or into the local Maildir).",
    "quarantine.deleted": "An operator deleted the held message.",
    "clamav.virus": "ClamAV found a virus.",
    "clamav.clean": "ClamAV found nothing.",
    "spamd.spam": "SpamAssassin scored the message as spam.",
    "rspamd.spam": "rspamd scored the message as spam (reject action).",
    "spamd.tagged": "SpamAssassin scored it spam-like: delivered with X-Spam-Flag.",
    "rspamd.tagged": "rspamd asked to add a header: delivered tagged.",
    "rspamd.quarantine": "rspamd's action asked to hold the message.",
    "rspamd.deferred": "rspamd asked to defer (greylisting or soft reject); the client retries.",
}

_SCANNER_FAILURE = "{name} could not scan the message ({how}); it was not accepted unscanned."
for _name, _label in (("clamav", "ClamAV"), ("spamd", "SpamAssassin"), ("rspamd", "rspamd")):
    for _how in ("failed", "timeout", "error"):
        EXPLAINED[f"{_name}.{_how}"] = _SCANNER_FAILURE.format(name=_label, how=_how.replace("failed", "unavailable"))

# Fallbacks by result, for keys without a sentence of their own.
_BY_RESULT = {
    "timeout": "The {check} check ran out of its time budget; a timeout never accepts.",
    "error": "The {check} check failed unexpectedly; a failure never accepts.",
    "unavailable": "The {check} check could not reach what it needs.",
    "oversize": "Too large for the {check} check.",
    "pass": "The {check} check passed.",
}

_TEXT = re.compile(r"^(?P<key>[^\s(\[]+)(?:\((?P<score>[^)]*)\))?(?:\[(?P<detail>.*)\])?$", re.S)


@dataclass(frozen=True, slots=True)
class ReadableFinding:
    key: str
    score: str
    detail: str
    explanation: str


def explain(key: str) -> str:
    if key in EXPLAINED:
        return EXPLAINED[key]
    check, _, result = key.partition(".")
    return _BY_RESULT.get(result, "{check}: {result}.").format(check=check or key, result=result or "?")


def readable(text: str) -> ReadableFinding:
    """A finding as recorded (`Finding.__str__`) split into key, score, detail and a sentence."""
    match = _TEXT.match(text)
    if match is None:
        return ReadableFinding(text, "", "", explain(text))
    key = match.group("key")
    return ReadableFinding(key, match.group("score") or "", match.group("detail") or "", explain(key))


def finding_key(text: str) -> str:
    return readable(text).key


def backscatter_keys(findings: tuple[str, ...] | list[str]) -> list[str]:
    return [key for key in map(finding_key, findings) if key in BACKSCATTER_FINDINGS]
