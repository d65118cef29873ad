"""Extraction helpers for the bounce classifier: what a report says about the original.

Pure functions over the parsed report; each tolerates missing or malformed fields by
returning nothing rather than guessing from unrelated text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import Message
from email.utils import getaddresses

from . import rules as R
from .mime import Parsed, header, headers


# What MTAs glue to the front of an address: Exchange IMS "SMTP=", DSN "rfc822;", "mailto:",
# a quote opened in the prose ('user@host', "user@host").
_ADDRESS_PREFIX = re.compile(r"^(?:(?:smtp|rfc822|x400|mailto)\s*[=:;]\s*|['\"`]+)+", re.I)


def clean_address(value: str) -> str | None:
    """One address as a notice names it, normalised: prefixes, quotes, angle brackets and
    trailing dots removed, the domain lower-cased (domains are case-insensitive, RFC 5321 §2.4;
    the local part is left alone). None when what remains is not a plausible address."""
    a = _ADDRESS_PREFIX.sub("", value.strip().strip("<>").strip())
    a = a.rstrip(".'\"`>").lstrip("<")
    local, at, domain = a.rpartition("@")
    if not at or not local or "." not in domain or len(a) > 254:
        return None
    return local + "@" + domain.lower()


def first_address(value: str) -> str | None:
    m = R.ADDRESS.search(value or "")
    return clean_address(m.group(1)) if m else None


def norm_id(value: str) -> str | None:
    value = (value or "").strip()
    m = R.MESSAGE_ID.search(value)
    if m:
        return m.group(1)
    value = value.strip("<> \t")
    return value if value and " " not in value else None


def dsn_values(blocks: list[list[tuple[str, str]]]) -> Callable[[str], str]:
    def get(name: str) -> str:
        for block in blocks:
            for key, value in block:
                if key == name and value:
                    return value
        return ""
    return get


def text_message_id(text: str, top: Message) -> str | None:
    own = norm_id(header(top, "Message-ID"))
    m = re.search(r"message-?id\s*(?:[:=]|is|was)?\s*(<[^<>\s]+>|[^\s<>]+@[^\s<>]+)", text, re.I)
    if m:
        value = norm_id(m.group(1))
        if value and value != own:
            return value
    return None


_SKIP_LOCAL = re.compile(r"^(?:mailer-daemon|postmaster|abuse|noreply|no-reply)$", re.I)
# Text before an address on its line that says it is *not* a failed recipient: an id header,
# a URL, the original's summary (Exchange's "To:/From:"), or a helpdesk contact.
_SKIP_PREFIX = re.compile(
    r"message-?id|https?://\S*$|envelope-from|^\s*(?:to|from|cc|sender|reply-to|sent by|date)\s*:"
    r"|^\s*x-[\w-]+:|\bfrom\s*<?$|sent (?:by|from)",
    re.I,
)
# A help desk named as a contact; it is no failed recipient wherever else the notice names it.
_CONTACT_PREFIX = re.compile(r"contact|assistance|support|help|write to|mailto:\S*$", re.I)
_LONE_PREFIX = re.compile(r"^\s*<?$")
_LONE_SUFFIX = re.compile(r"^>?\s*:?\s*$")
# "<user@host>: reason" (Postfix, qmail) or "user@host ... reason" opening a line after a label.
_NAMED_PREFIX = re.compile(
    r"^\s*(?:<|(?:failed |unknown |bad |invalid |final |original )?(?:recipient|address|addressee|user)"
    r"(?:\(s\)|s|es)?\s*:\s*<?|[45]\d\d[ -].*)$", re.I)
_NAMED_SUFFIX = re.compile(r"^>?\s*(?::|\.{3}|\s-\s|$)")
_LINE_HEAD_SUFFIX = re.compile(r"^>?(?:\s|:|\.{3}|$)")
# Postfix and Sendmail name the address we sent to after an alias expansion.
_EXPANDED_FROM = re.compile(r"\s*\(expanded from:?\s*<?([^<>()\s]+@[^<>()\s]+?)>?\s*\)", re.I)
# Received: ... for <user@host>; — the envelope recipient the returned copy was delivered to.
_RECEIVED_FOR = re.compile(r"\bfor\s+<?([^<>;\s]+@[^<>;\s]+?)>?\s*;", re.I)


def recipients(is_feedback: bool, top: Message, parts: Parsed, report_text: str, original: Message | None,
                original_sender: str | None, original_from: str | None) -> tuple[str, ...]:
    found: list[str] = []

    def take(value: str) -> None:
        a = first_address(value.split(";", 1)[1] if ";" in value else value)
        if a and a.lower() not in (x.lower() for x in found):
            found.append(a)

    # 1. Machine-readable fields: DSN per-recipient blocks, ARF, Exim's header.
    for block in parts.dsn_blocks:
        fields = dict(block)
        # Final-Recipient first, as the reference decoders do (Original-Recipient is optional).
        if "final-recipient" in fields:
            take(fields["final-recipient"])
        elif "original-recipient" in fields:
            take(fields["original-recipient"])
    for block in parts.feedback_blocks:
        for key, value in block:
            if key in ("original-rcpt-to", "removal-recipient"):
                take(value)
    if found:
        return tuple(found)
    for value in headers(top, "X-Failed-Recipients"):
        for piece in value.split(","):
            take(piece)
    if found:
        return tuple(found)
    # 2. DSN-like fields written into the text (many MTAs do this without the MIME part).
    for m in re.finditer(r"^\s*(?:final|original)-recipient:\s*(?:rfc822;)?\s*(\S+)", report_text, re.I | re.M):
        take(m.group(1))
    if found:
        return tuple(found)
    if is_feedback:
        if original is not None:
            take(header(original, "To"))
        elif header(top, "X-Apple-Unsubscribe"):
            take(header(top, "From"))  # the unsubscribing recipient sends it themselves
        return tuple(found)
    # 3. Addresses named in the report text, minus the parties to the report itself and the
    #    addresses the original's own headers carry (its sender, its list, its To/Cc when they
    #    are not what the notice names as failed).
    parties: set[str] = set()
    for name in ("From", "To", "Reply-To", "Return-Path", "Sender", "Cc"):
        for _, a in getaddresses(headers(top, name)):
            if a:
                parties.add(a.lower())
    exclude = parties | {a.lower() for a in (original_sender, original_from) if a}
    own, original_rcpts, envelope = _original_addresses(original)
    exclude |= own
    named: list[str] = []  # on a line of its own, "<a>: reason", or after a label like "Recipient:"
    prose: list[str] = []
    alone: list[str] = []  # addresses that are the whole line: MTAs list failures that way
    helpdesk: set[str] = set()
    text = report_text[:32768]
    for m in R.ADDRESS.finditer(text):
        a = clean_address(m.group(1))
        if a is None:
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        prefix = text[line_start:m.start()].lower()
        suffix = text[m.end():line_end if line_end >= 0 else None]
        expanded = _EXPANDED_FROM.match(text, line_end + 1) if line_end >= 0 else None
        if expanded is None:
            expanded = _EXPANDED_FROM.match(suffix)
        if expanded:  # the alias we addressed, not what it expanded to
            a = clean_address(expanded.group(1)) or a
        if _LONE_PREFIX.match(prefix) and _LONE_SUFFIX.match(suffix):
            alone.append(a)
        lowered = a.lower()
        if _CONTACT_PREFIX.search(prefix):
            helpdesk.add(lowered)
            continue
        if _SKIP_PREFIX.search(prefix):
            continue
        if lowered in parties or _SKIP_LOCAL.match(a.split("@", 1)[0]):
            continue
        if _NAMED_PREFIX.match(prefix) and _NAMED_SUFFIX.match(suffix):
            named.append(a)  # "<a>: reason" names the failure explicitly, even a self-addressed one
        elif lowered in exclude:
            continue
        elif _LONE_PREFIX.match(prefix) and _LINE_HEAD_SUFFIX.match(suffix):
            named.append(a)  # opens its line: how MTAs list failures ("a@b on <date>", "a@b (reason)")
        elif lowered not in original_rcpts or lowered in envelope:
            prose.append(a)  # not the original's To/Cc (often a list) unless the envelope confirms it
        if len(named) + len(prose) >= 40:
            break
    # Prose names helpdesks and examples too: when the notice lists failures in a structured
    # way, or its prose names the original's envelope recipient, those are the better evidence.
    named = [a for a in named if a.lower() not in helpdesk]
    prose = [a for a in prose if a.lower() not in helpdesk]
    confirmed = [a for a in prose if a.lower() in envelope]
    for a in (named + confirmed) if named or confirmed else prose:
        take(a)
        if len(found) >= 20:
            break
    if found:
        return tuple(found)
    # The anonymised or odd cases where the failed address equals a header party.
    for a in alone:
        take(a)
    if found:
        return tuple(found)
    # AOL and other old MTAs list failed mailboxes by local part alone, under their own domain.
    for local in _bare_locals(text):
        domain = next((e.rpartition("@")[2] for e in envelope if e.rpartition("@")[0] == local.lower()), None)
        if domain is None and R.SYSTEM_SENDER.search(header(top, "From")):
            domain = (first_address(header(top, "From")) or "").rpartition("@")[2]
        if domain:
            take(local + "@" + domain)
    if found:
        return tuple(found)
    # 4. Last resort: whom the original was addressed to.
    if original is not None:
        for name in ("To", "Cc"):
            for _, a in getaddresses(headers(original, name)):
                if a and a.lower() not in exclude:
                    take(a)
    return tuple(found)


def _original_addresses(original: Message | None) -> tuple[set[str], set[str], set[str]]:
    """The returned original's own addresses, lower-cased: (its sender and list addresses —
    never a failed recipient; its To/Cc; its envelope recipients, from `Received: ... for <x>`)."""
    own: set[str] = set()
    rcpts: set[str] = set()
    envelope: set[str] = set()
    if original is None:
        return own, rcpts, envelope
    for name in ("From", "Return-Path", "Sender", "Reply-To", "Errors-To", "List-Post", "List-Id",
                 "X-BeenThere", "List-Help", "List-Subscribe", "List-Unsubscribe"):
        for m in R.ADDRESS.finditer(" ".join(headers(original, name))):
            own.add(m.group(1).lower())
    for name in ("To", "Cc"):
        for _, a in getaddresses(headers(original, name)):
            if a:
                rcpts.add(a.lower())
    for value in headers(original, "Received")[:50]:
        for m in _RECEIVED_FOR.finditer(value):
            a = clean_address(m.group(1))
            if a:
                envelope.add(a.lower())
    return own, rcpts, envelope


# "… to the following recipient(s) …" then, within a few lines, an indented bare local part.
_FAILURE_LIST_HEAD = re.compile(r"following (?:recipient|address|user|mailbox)", re.I)
_BARE_LOCAL = re.compile(r"^[ \t]+([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})[ \t]*$")


def _bare_locals(text: str) -> list[str]:
    lines = text[:16384].split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        if _FAILURE_LIST_HEAD.search(line):
            for following in lines[i + 1:i + 5]:
                m = _BARE_LOCAL.match(following)
                if m and m.group(1) not in out:
                    out.append(m.group(1))
    return out[:20]


def status_codes(parts: Parsed, report_text: str) -> tuple[str, ...]:
    codes: list[str] = []

    def add(code: str) -> None:
        if code not in codes:
            codes.append(code)

    for block in parts.dsn_blocks:
        for key, value in block:
            if key == "status":
                m = R.ENHANCED.search(value)
                if m:
                    add(m.group(1))
            elif key == "diagnostic-code":
                for code in R.smtp_codes(value):
                    add(code)
                for m in R.enhanced_matches(value):
                    add(m.group(1))
    text = report_text[:32768]
    for m in R.enhanced_matches(text):
        add(m.group(1))
    for code in R.smtp_codes(text):
        add(code)
    return tuple(codes[:20])
