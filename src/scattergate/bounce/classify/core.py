"""Is this message a bounce, an auto-reply, a challenge or a feedback report — and about what?

A pure function over bytes. Structure (RFC 3464 / RFC 5965 / RFC 8098 report parts) is
trusted first because it is unambiguous; everything else is graded evidence — sender,
subject, headers, body phrases, an attached original — summed into a score per kind.
Only the report's own text counts as evidence: the returned original (which may itself be
an auto-reply or a bounce) is read for extraction, never for classification.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace
from email.message import Message
from email.utils import getaddresses, parseaddr

from . import rules as R
from . import extract as X
from .mime import (Parsed, collect, has_field, header, headers, normalise, param, parse,
                            split_original)

__all__ = ["Classification", "Kind", "classify"]


class Kind(enum.StrEnum):
    DSN = "dsn"  # RFC 3464 delivery status notification
    BOUNCE = "bounce"  # non-standard MTA bounce / delay warning
    AUTO_REPLY = "auto_reply"  # RFC 3834 auto-reply, vacation notice, MDN
    CHALLENGE = "challenge"  # challenge-response sender verification
    FEEDBACK = "feedback"  # RFC 5965 ARF feedback report
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    confidence: float
    evidence: tuple[str, ...]
    original_message_id: str | None = None
    original_sender: str | None = None
    original_from: str | None = None
    # For ARF: the complaining recipient(s); empty for auto-replies (nothing failed).
    failed_recipients: tuple[str, ...] = ()
    status_codes: tuple[str, ...] = ()
    received_chain: tuple[str, ...] = ()

    @property
    def is_bounce(self) -> bool:
        return self.kind in (Kind.DSN, Kind.BOUNCE)

    @property
    def is_automated_response(self) -> bool:
        """Anything another server sent *because of* a message: the backscatter family."""
        return self.kind is not Kind.NONE


# Score thresholds: below these the message is `none`. Chosen on the corpora (docs/classifier.md).
_BOUNCE_MIN = 5
_AUTO_MIN = 4
_CHALLENGE_MIN = 5

_NONE = Classification(Kind.NONE, 0.0, ())


def classify(message: bytes | str, envelope_sender: str | None = None, *, kind_only: bool = False) -> Classification:
    """Classify one message. `envelope_sender` is MAIL FROM if known ('' for the null sender).

    `kind_only`: the caller reads nothing of a `none` result but its kind (the backscatter check
    for a non-null sender). Body tables that cannot lift their kind to its minimum are then not
    read, so a `none` result's confidence may be lower; any other result is the same.
    """
    try:
        return _classify(message, envelope_sender, kind_only)
    except Exception:  # defence in depth: a classifier bug must never fail a delivery
        return Classification(Kind.NONE, 0.0, ("error",))


def _classify(message: bytes | str, envelope_sender: str | None, kind_only: bool = False) -> Classification:
    data = normalise(message)
    if not data.strip():
        return _NONE
    top = parse(data)
    parts = collect(top)
    body = "\n".join(parts.texts)
    report_text, inline_original = split_original(body)
    if not parts.originals and inline_original is not None:
        parts.originals.append(inline_original)

    evidence: list[str] = []
    kind, confidence = _structural(top, parts, evidence)
    ses = R.SES_JSON.search(body[:65536]) if kind is Kind.NONE and "notificationType" in body[:65536] else None
    if ses:
        kind = Kind.FEEDBACK if ses.group(1) == "Complaint" else Kind.BOUNCE
        confidence = 0.95
        evidence.append("ses-json:" + ses.group(1).lower())
    if kind is Kind.NONE:
        kind, confidence = _graded(top, parts, report_text, envelope_sender, evidence, kind_only)
    if kind is Kind.NONE:
        return Classification(Kind.NONE, confidence, tuple(evidence))
    result = _extract(kind, confidence, evidence, top, parts, report_text)
    if ses:
        result = _ses_fields(result, body[:65536])
    return result


def _ses_fields(result: Classification, body: str) -> Classification:
    """Amazon SES notifications are JSON (often truncated): read the fields by pattern."""
    recipients: list[str] = []
    for m in R.SES_RECIPIENT.finditer(body):
        for a in R.ADDRESS.findall(m.group(1)):
            if a.lower() not in (x.lower() for x in recipients):
                recipients.append(a)
        if recipients:
            break
    mid = R.SES_MESSAGE_ID.search(body)
    source = R.SES_SOURCE.search(body)
    return replace(
        result,
        failed_recipients=tuple(recipients) or result.failed_recipients,
        original_message_id=mid.group(1) if mid else result.original_message_id,
        original_sender=X.first_address(source.group(1)) if source else result.original_sender,
    )


# --- classification ------------------------------------------------------------------------

def _structural(top: Message, parts: Parsed, evidence: list[str]) -> tuple[Kind, float]:
    """Report MIME types: standardised and unambiguous."""
    report_type = param(top, "report-type") if "multipart/report" in parts.content_types else ""
    if parts.feedback_blocks or report_type == "feedback-report":
        evidence.append("arf:" + ("message/feedback-report" if parts.feedback_blocks else "report-type"))
        return Kind.FEEDBACK, 0.99
    if any(o.get(R.JMRP_HEADER) for o in parts.originals):
        evidence.append("jmrp:" + R.JMRP_HEADER)
        return Kind.FEEDBACK, 0.95
    if header(top, "X-Apple-Unsubscribe").lower() == "true":
        evidence.append("x-apple-unsubscribe")
        return Kind.FEEDBACK, 0.9
    dsn_fields = {name for block in parts.dsn_blocks for name, _ in block}
    if report_type in ("delivery-status", "global-delivery-status") or parts.dsn_blocks:
        if report_type:
            evidence.append("multipart/report;report-type=" + report_type)
        if parts.dsn_blocks:
            evidence.append("message/delivery-status")
        if dsn_fields & {"final-recipient", "original-recipient", "action", "status"}:
            evidence.append("dsn-fields")
            return Kind.DSN, 0.99
        return Kind.DSN, 0.9
    if parts.mdn_parts or report_type in ("disposition-notification", "global-disposition-notification"):
        evidence.append("mdn:disposition-notification")
        return Kind.AUTO_REPLY, 0.95
    return Kind.NONE, 0.0


def _subject(top: Message) -> tuple[str, bool]:
    """Subject with list tags removed, and whether a human reply/forward prefix precedes it."""
    subject = header(top, "Subject")
    replied = False
    for _ in range(6):  # "[list] Re: [list] ..." chains
        stripped = R.LIST_TAG.sub("", subject, count=1)
        m = R.REPLY_PREFIX.match(stripped)
        if m:
            replied = True
            stripped = stripped[m.end():]
        if stripped == subject:
            break
        subject = stripped.strip()
    return subject, replied


_AUTO_FIELDS = frozenset(name.lower() for name in R.AUTO_HEADERS)
_CHALLENGE_FIELDS = frozenset(name.lower() for name in R.CHALLENGE_HEADERS)


def _present(top: Message, names: tuple[str, ...], lowered: frozenset[str]) -> tuple[str, ...]:
    """`names`, or () when the message has none of them: most mail has none, and a header()
    call per name (all returning "") is then wasted."""
    return names if has_field(top, lowered) else ()


# Every SYSTEM_DISPLAY match holds one of these words, case-folded.
_DISPLAY_WORDS = ("mail", "post", "internet", "system", "microsoft", "delivery")


def _system_sender(from_: str) -> bool:
    """Whether the From field is one MTAs use for their reports (address or display name).

    parseaddr() is a costly step for ordinary mail and rarely needed. Without "(" and ":" in the
    field (comments and groups, where it recurses and may raise, as before) the display name it
    returns is made of runs of the field's own characters, joined by quoted pairs at most; so if
    no key word occurs in the field with its backslashes removed, SYSTEM_DISPLAY cannot match.
    """
    if "(" not in from_ and ":" not in from_:
        plain = R.fold(from_).replace("\\", "")
        if not any(word in plain for word in _DISPLAY_WORDS):
            return R.SYSTEM_SENDER.search(from_) is not None
    display, _addr = parseaddr(from_)
    return bool(R.SYSTEM_SENDER.search(from_) or R.SYSTEM_DISPLAY.match(display or ""))


def _machine_prefix(subject: str, thread_topic: str) -> bool:
    """Exchange keeps the conversation's subject in Thread-Topic; its auto-replies put a phrase
    in the user's language before it ("Automatikus válasz: <topic>"). People's reply and forward
    prefixes are short words ("RE", "Odp", "Vá") and are refused by REPLY_PREFIX or by length."""
    topic = thread_topic.strip()
    if not topic or not subject.endswith(topic) or len(subject) == len(topic):
        return False
    prefix = subject[: len(subject) - len(topic)].rstrip()
    return prefix.endswith(":") and len(prefix) >= 9 and not R.REPLY_PREFIX.match(prefix)


def _list_admin(top: Message) -> bool:
    """Addressed to a list's own administrative address: a list manager relaying a notice it
    received for the list (Mailman -admin/-bounces/-owner, Majordomo owner-), not a list post."""
    to = header(top, "To")
    return R.S_LIST_ADMIN.search(to, R.fold(to)) is not None


# A quoted line ("> ..." after any blanks) with the line end before it. Opening with "\n" lets
# `re` jump from line end to line end; [^\S\n] is what str.lstrip() strips, within a line.
_QUOTED_LINE = re.compile(r"\n[^\S\n]*>[^\n]*")


def _unquoted(text: str) -> str:
    """The text without its quoted lines: the lines split at "\n" whose first non-blank is ">".

    One substitution over "\n" + text instead of a Python test per line: every line then
    follows a "\n", a quoted one leaves with it, and the "\n" added in front goes at the end.
    """
    if ">" not in text:
        return text
    return _QUOTED_LINE.sub("", "\n" + text)[1:]


# Points of the evidence read last for its kind: with `kind_only`, a table whose points cannot
# lift its kind to the minimum is not read (nothing after it adds to that kind).
_WEAK_POINTS = 1  # a failure reason in the body (bounce)
_ENHANCED_POINTS = 1  # an RFC 3463 status code in the body (bounce)
_AWAY_POINTS = 2  # an away notice in the body (auto-reply)


def _graded(top: Message, parts: Parsed, report_text: str, envelope_sender: str | None,
            evidence: list[str], kind_only: bool = False) -> tuple[Kind, float]:
    subject, replied = _subject(top)
    subject_folded = R.fold(subject)  # for the subject patterns' literal screens
    from_ = header(top, "From")
    return_path = header(top, "Return-Path")
    auto_submitted = header(top, "Auto-Submitted").lower()
    precedence = header(top, "Precedence").lower()
    text = _unquoted(report_text)[:65536]
    folded = R.fold(text)  # for the phrase patterns' literal pre-filters
    # The prefixes the phrase patterns read (32, 16, 8 KiB), cut once.
    text32, folded32 = text[:32768], folded[:32768]
    text16, folded16 = text32[:16384], folded32[:16384]
    text8, folded8 = text16[:8192], folded16[:8192]
    vocabulary = R.words(folded32)  # the longest prefix any phrase pattern reads
    scores = {Kind.BOUNCE: 0, Kind.AUTO_REPLY: 0, Kind.CHALLENGE: 0}
    ev: dict[Kind, list[str]] = {k: [] for k in scores}

    def add(kind: Kind, points: int, name: str) -> None:
        scores[kind] += points
        ev[kind].append(name)

    # Who sent it. A null reverse-path is the RFC 5321 mark of a notification.
    listed = bool(header(top, "List-Id") or header(top, "List-Unsubscribe"))
    null_sender = envelope_sender == "" or return_path.replace(" ", "") == "<>"
    if null_sender:
        add(Kind.BOUNCE, 2, "null-sender")
        add(Kind.AUTO_REPLY, 1, "null-sender")
    system_sender = _system_sender(from_) or R.EMPTY_ADDRESS.search(from_) is not None
    if system_sender:
        add(Kind.BOUNCE, 2, "system-sender")
    if auto_submitted.startswith("auto-replied"):
        add(Kind.AUTO_REPLY, 4, "auto-submitted:auto-replied")
        add(Kind.BOUNCE, 1, "auto-submitted:auto-replied")
        add(Kind.CHALLENGE, 1, "auto-submitted:auto-replied")
    elif auto_submitted.startswith("auto-generated"):
        add(Kind.BOUNCE, 1, "auto-submitted:auto-generated")
        add(Kind.CHALLENGE, 1, "auto-submitted:auto-generated")

    if header(top, "X-Failed-Recipients"):
        add(Kind.BOUNCE, 4, "x-failed-recipients")
    if (null_sender or system_sender) and header(top, "X-Yahoo-Newman-Property").lower() == "bmbounce":
        add(Kind.BOUNCE, 2, "x-yahoo-newman-property:bmbounce")  # Yahoo's bounce mailer
    if not replied and R.BOUNCE_SUBJECT.match(subject):
        add(Kind.BOUNCE, 3, "subject:bounce")
    elif R.S_BOUNCE_SUBJECT_TAIL.search(subject[-40:], R.fold(subject[-40:])):  # tails are short: only the end is read
        add(Kind.BOUNCE, 2, "subject:bounce-tail")
    # The added tables (old MTAs, content filters, more languages) are read only when the
    # message already shows some sign of a notification: ordinary mail then pays nothing for them.
    strong_tables = ((R.G_BOUNCE_PHRASE_STRONG, R.G_BOUNCE_PHRASE_MORE) if scores[Kind.BOUNCE] > 0 or parts.originals
                     else (R.G_BOUNCE_PHRASE_STRONG,))
    strong = {m.group(0).lower() for table in strong_tables
              for m in table.finditer(text32, folded32, vocabulary)}
    if strong:
        add(Kind.BOUNCE, 2 + min(len(strong), 3), "body:" + sorted(strong)[0][:40])
    # A null-sender message carrying another message is what a bounce is, whatever its words.
    original_points = ((3 if null_sender else 2) if parts.attached else 1) if parts.originals else 0
    # The last of the bounce evidence; past this point only other kinds gain points.
    bounce_open = not kind_only or (
        scores[Kind.BOUNCE] + _WEAK_POINTS + original_points + _ENHANCED_POINTS >= _BOUNCE_MIN)
    if bounce_open and R.G_BOUNCE_PHRASE_WEAK.exists(text16, folded16, vocabulary):
        add(Kind.BOUNCE, _WEAK_POINTS, "body:failure-reason")
    if parts.originals:
        add(Kind.BOUNCE, original_points, "original-attached")
    if bounce_open and R.ENHANCED_HINT.search(text, 0, 16384) and R.ENHANCED.search(text16):
        add(Kind.BOUNCE, _ENHANCED_POINTS, "enhanced-status-code")

    # Auto-replies.
    for name in _present(top, R.AUTO_HEADERS, _AUTO_FIELDS):
        value = header(top, name).lower()
        if value and value not in ("no", "false", "0"):
            add(Kind.AUTO_REPLY, 4, name)
            break
    if precedence.startswith("auto_reply") or precedence.startswith("auto-reply"):
        add(Kind.AUTO_REPLY, 4, "precedence:auto_reply")
    elif precedence in ("bulk", "junk", "list"):
        add(Kind.AUTO_REPLY, 1, "precedence:" + precedence)
    x_mailer = header(top, "X-Mailer")
    if x_mailer and R.S_AUTO_MAILER.search(x_mailer, R.fold(x_mailer)):
        add(Kind.AUTO_REPLY, 4, "x-mailer:auto-responder")
    if header(top, "X-Auto-Response-Suppress"):
        add(Kind.AUTO_REPLY, 1, "x-auto-response-suppress")
    if not replied and R.S_AUTO_SUBJECT_STRONG.match(subject, subject_folded):
        add(Kind.AUTO_REPLY, 4, "subject:auto-reply")
    elif not replied and R.AUTO_SUBJECT.match(subject):
        add(Kind.AUTO_REPLY, 3, "subject:away")
    if not replied and _machine_prefix(subject, header(top, "Thread-Topic")):
        add(Kind.AUTO_REPLY, 2, "subject:prefix-before-thread-topic")
    # The last of the auto-reply evidence (the challenge section adds only to its own kind).
    if (not kind_only or scores[Kind.AUTO_REPLY] + _AWAY_POINTS >= _AUTO_MIN) and (
            R.G_AUTO_BODY.exists(text8, folded8, vocabulary) or (
                scores[Kind.AUTO_REPLY] >= 2 and R.G_AUTO_BODY_INTL.exists(text8, folded8, vocabulary))):
        add(Kind.AUTO_REPLY, _AWAY_POINTS, "body:away")

    # Challenge-response.
    for name in _present(top, R.CHALLENGE_HEADERS, _CHALLENGE_FIELDS):
        if header(top, name):
            add(Kind.CHALLENGE, 4, name)
            break
    if not replied and R.S_CHALLENGE_SUBJECT.search(subject, subject_folded):
        add(Kind.CHALLENGE, 2, "subject:challenge")
    # Not under "Re:", where a person may be talking about such systems. Two distinct phrases
    # carry a challenge sent as a plain message, without any challenge header or subject;
    # challenge systems answer senders, never lists, so list mail skips that table.
    if not replied:
        known = R.G_CHALLENGE_BODY.exists(text16, folded16, vocabulary)
        plain = set() if listed else {
            m.group(0).lower() for m in R.G_CHALLENGE_PLAIN.finditer(text16, folded16, vocabulary)}
        if known or plain:
            add(Kind.CHALLENGE, 4 if len(plain) + known >= 2 else 3, "body:challenge")
            if R.G_CONFIRM_URL.exists(text16, folded16, vocabulary):
                add(Kind.CHALLENGE, 1, "confirm-link")

    # Mailing-list traffic is not a notification unless something strong says so: List-Id on
    # an ordinary post, newsletter or digest must not tip it over the line.
    if listed and not _list_admin(top):
        for kind in scores:
            if scores[kind] < 7:
                scores[kind] -= 1
        # A list post *about* bounces has the words but not the sender of one.
        if not (null_sender or system_sender or header(top, "X-Failed-Recipients")):
            scores[Kind.BOUNCE] -= 3

    minimum = _MINIMUM
    # Order breaks ties: a bounce that also says "auto-replied" is still a bounce.
    best = _best(scores)
    if scores[best] < minimum[best]:
        return Kind.NONE, round(max(0.0, 0.4 * scores[best] / minimum[best]), 2)
    evidence.extend(ev[best])
    confidence = min(0.98, 0.55 + 0.05 * (scores[best] - minimum[best]) + 0.05)
    return best, round(confidence, 2)


_MINIMUM = {Kind.BOUNCE: _BOUNCE_MIN, Kind.AUTO_REPLY: _AUTO_MIN, Kind.CHALLENGE: _CHALLENGE_MIN}


def _best(scores: dict[Kind, int]) -> Kind:
    """The kind furthest above (or least below) its minimum; the first in order on a tie."""
    best, margin = Kind.NONE, 0
    for kind, score in scores.items():
        if best is Kind.NONE or score - _MINIMUM[kind] > margin:
            best, margin = kind, score - _MINIMUM[kind]
    return best


# --- the returned original ------------------------------------------------------------------

# --- extraction ------------------------------------------------------------------------------

def _extract(kind: Kind, confidence: float, evidence: list[str], top: Message, parts: Parsed,
             report_text: str) -> Classification:
    original = parts.originals[0] if parts.originals else None
    # Some reports attach only headers to a rfc822 part whose first block is empty: use the
    # first original that has any header at all.
    for candidate in parts.originals:
        if candidate.keys():
            original = candidate
            break

    dsn_field = X.dsn_values(parts.dsn_blocks + parts.feedback_blocks)
    message_id = None
    if original is not None:
        message_id = X.norm_id(header(original, "Message-ID"))
    if message_id is None:
        message_id = X.norm_id(dsn_field("x-original-message-id") or dsn_field("original-message-id"))
    if message_id is None and kind in (Kind.AUTO_REPLY, Kind.CHALLENGE):
        message_id = X.norm_id(header(top, "In-Reply-To"))
    if message_id is None:
        message_id = X.text_message_id(report_text, top)

    original_from = X.first_address(header(original, "From")) if original is not None else None
    original_sender = None
    if original is not None:
        original_sender = X.first_address(header(original, "Return-Path")) or None
    if original_sender is None and kind is Kind.FEEDBACK:
        original_sender = X.first_address(dsn_field("original-mail-from"))
    if original_sender is None and kind is not Kind.FEEDBACK:
        # A bounce or auto-reply is addressed to the envelope sender of what it answers.
        rcpts = [a for _, a in getaddresses(headers(top, "To")) if a]
        original_sender = X.first_address(rcpts[0]) if len(rcpts) == 1 else None
    if original_sender is None:
        original_sender = original_from

    if kind in (Kind.DSN, Kind.BOUNCE, Kind.FEEDBACK):
        recipients = X.recipients(kind is Kind.FEEDBACK, top, parts, report_text, original,
                                  original_sender, original_from)
    else:
        recipients = ()
    codes = X.status_codes(parts, report_text) if kind in (Kind.DSN, Kind.BOUNCE) else ()
    chain: tuple[str, ...] = ()
    if original is not None:
        chain = tuple(headers(original, "Received")[:50])
    return Classification(kind, confidence, tuple(evidence), message_id, original_sender,
                          original_from, recipients, codes, chain)
