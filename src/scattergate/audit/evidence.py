"""What a refusal is about: the recipient, or something else (HELO, client, sender, content...).

The audit may call a server safe only on evidence about *recipients*. A refusal at RCPT is not
such evidence by itself: Postfix reports HELO, client and sender restrictions at RCPT too
("delayed evaluation", smtpd_delay_reject), so `504 5.5.2 <x>: Helo command rejected` arrives
in reply to RCPT and says nothing about the recipient. We read, in this order:
1. the reason phrases MTAs put in the text (Postfix's "Recipient address rejected:",
   "Helo command rejected:", ...; "greylisted" anywhere: greylisting is never about the recipient);
2. the RFC 3463 enhanced status code (X.1.1-X.1.6 and X.2.1 concern the recipient's address
   or mailbox, X.1.7/X.1.8 the sender, X.5.x the protocol, X.6.x the content, ...);
3. wordings of unknown-user replies from servers without enhanced codes;
4. the bare reply code with the command it answered (RFC 5321 §4.2.3: at RCPT, 550/551/553
   mean the mailbox; 500-504 a syntax or sequence error).
Pure: no sockets here.
"""

from __future__ import annotations

import enum
import re

from .probe import Reply


class Concern(enum.StrEnum):
    RECIPIENT = "recipient"
    SENDER = "sender"
    HELO = "HELO name"
    CLIENT = "client address"
    RELAY = "relaying (the domain is not served here)"
    GREYLISTING = "greylisting"
    CONTENT = "message content"
    PROTOCOL = "protocol"
    OTHER = "unstated reason"


# Reason phrases (lower case) and what they are about; the first found wins.
_PHRASES: tuple[tuple[str, Concern], ...] = (
    ("greylist", Concern.GREYLISTING),
    ("helo command rejected", Concern.HELO),
    ("client host rejected", Concern.CLIENT),
    ("sender address rejected", Concern.SENDER),
    ("relay access denied", Concern.RELAY),
    ("relaying denied", Concern.RELAY),
    ("recipient address rejected", Concern.RECIPIENT),
)
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|unknown (recipient|mailbox)"
    r"|mailbox (unavailable|not found|does not exist)|recipient (unknown|not found|does not exist)"
    r"|invalid recipient", re.IGNORECASE)
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_status(reply: Reply) -> tuple[int, int, int] | None:
    """The RFC 3463 code at the start of the reply text, if any."""
    match = _ENHANCED.match(reply.text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _by_enhanced(subject: int, detail: int) -> Concern | None:
    if subject == 1:
        if 1 <= detail <= 6 or detail == 10:
            return Concern.RECIPIENT  # bad destination mailbox / system / syntax, moved, null MX
        if detail in (7, 8):
            return Concern.SENDER
        return Concern.OTHER
    if subject == 2:
        return Concern.RECIPIENT if detail in (1, 2) else Concern.OTHER  # disabled / full mailbox
    if subject == 5:
        return Concern.PROTOCOL
    if subject == 6:
        return Concern.CONTENT
    return None  # X.3 mail system, X.4 routing, X.7 policy: ask the text


def concern(reply: Reply) -> Concern:
    """What this refusal (4xx/5xx) is about."""
    text = reply.text.lower()
    for phrase, about in _PHRASES:
        if phrase in text:
            return about
    status = enhanced_status(reply)
    if status is not None and (about := _by_enhanced(status[1], status[2])) is not None:
        return about
    if _UNKNOWN_USER.search(text):
        return Concern.RECIPIENT
    verb = reply.command.split(" ", 1)[0].split(":", 1)[0].upper()
    if 500 <= reply.code <= 504:
        return Concern.PROTOCOL
    if verb == "RCPT" and reply.code in (550, 551, 553):
        return Concern.RECIPIENT  # RFC 5321: mailbox unavailable / not local / name not allowed
    if verb == "MAIL" and reply.code in (550, 553):
        return Concern.SENDER
    return Concern.OTHER


def definitely_about_recipient(reply: Reply) -> bool:
    """A refusal that names the recipient as the problem in its status code (X.1.1-X.1.6,
    X.2.1): enough to trust a *temporary* refusal that never changes (Postfix's
    reject_unverified_recipient answers 450 4.1.1 by default), unlike greylisting's 4.2.0/4.7.1."""
    if concern(reply) is not Concern.RECIPIENT:
        return False
    status = enhanced_status(reply)
    return status is not None and ((status[1] == 1 and 1 <= status[2] <= 6) or status[1:] == (2, 1))
