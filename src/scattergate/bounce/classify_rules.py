"""Pattern tables for the bounce classifier: senders, subjects and body phrases.

Written from the RFCs and from reading real bounces (the sisimai corpus, SpamAssassin ham):
each pattern names a wording that MTAs actually emit. Kept apart from the logic so new
wordings are a one-line change.
"""

from __future__ import annotations

import re

_I = re.I | re.M

# Local parts and display names used by MTAs for their own reports.
SYSTEM_SENDER = re.compile(
    r"(?:^|[<\s\"'])(?:mailer[-_.]?daemon|post[-_.]?master|mail[-_.]?delivery[-_.]?(?:system|subsystem)?"
    r"|mdaemon|bounces?[-+_.]?(?:handler|processor)?|mailadmin|mail[-_.]?admin|mailer|maildelivery"
    r"|Delivery[-_ ]?Status[-_ ]?Notification|mail[-_ ]?system|notifications?[-_.]?mailer)@",
    re.I,
)
SYSTEM_DISPLAY = re.compile(
    r"^\s*\"?(?:mail delivery (?:system|subsystem|service)|mailer[- ]daemon|postmaster"
    r"|mail administrator|internet mail delivery|system administrator|mail ?delivery"
    r"|post office|microsoft outlook|mail system|delivery status notification)\b",
    re.I,
)

# Subjects MTAs put on bounces, in the languages seen in real traffic. Matched only at the
# start of the subject (after list tags) so that "Re: Undeliverable ..." from a human is not one.
BOUNCE_SUBJECT = re.compile(
    r"^(?:"
    r"undeliver(?:ed|able)|undelivered mail|returned mail|returned to sender|mail returned"
    r"|delivery (?:status )?notification|delivery[- ]status|delivery (?:report|failure|failed|problem)"
    r"|delivery has failed|mail delivery|message delivery|(?:permanent |temporary )?delivery failure"
    r"|failure notice|failed (?:mail|delivery)|failure delivery|mail failure|mail failed|nondeliverable"
    r"|non[- ]?delivery|could not (?:send|deliver)|cannot deliver|unable to deliver|delivery notification"
    r"|mail system error|postmaster notify|warning: could not send|warning--could not send"
    r"|warning: message .{0,80} delayed|delayed mail|mail could not be delivered|message not delivered"
    r"|notice: mail delivery|sorry,? your message|there was an error sending|message you sent blocked"
    r"|\**message you sent blocked|email delivery failure|\[postmaster\]|considered unsolicited bulk"
    r"|delivery final failure|mail delivery failed|message status - undeliverable|returned mail:"
    # French, German, Dutch, Italian, Spanish, Portuguese, Polish, Swedish, Czech, Russian, Japanese
    r"|non remis|non distribu|échec de (?:la )?remise|impossible de remettre|unzustellbar"
    r"|nicht zustellbar|unzustellbare|benachrichtigung zum übermittlungsstatus|onbestelbaar"
    r"|niet bezorgd|non recapitabile|mancato recapito|no se puede entregar|no entregado"
    r"|notificación de estado de (?:la )?entrega|não (?:foi possível )?entreg|mensagem não entregue"
    r"|niedostarczon|nie można dostarczyć|olevererbart|kan inte levereras|nedoručiteln"
    r"|ваше сообщение не доставлено|недоставленное сообщение|не доставлено"
    r"|メッセージを配信できません|配信エラー|配送エラー|未配達|送信できませんでした"
    r"|傳遞失敗|退信|邮件退回|系统退信"
    r")",
    re.I,
)
DELAY_SUBJECT = re.compile(r"\b(?:delay(?:ed)?|still being retried|warning)\b", re.I)

# Phrases only an MTA writes when returning mail: one of these is strong evidence.
BOUNCE_PHRASE_STRONG = re.compile(
    r"(?:this is the mail system at host|i'm afraid i wasn't able to deliver"
    r"|this message was created automatically by mail delivery software"
    r"|delivery to the following recipients? (?:failed|was delayed|has been delayed)"
    r"|could not be delivered to one or more (?:of its )?recipients"
    r"|the following address(?:es)? had (?:permanent fatal|transient non-fatal|delivery) errors"
    r"|this is the qmail-send program|i'm sorry, i wasn't able to deliver"
    r"|your message did not reach some or all of the intended recipients"
    r"|delivery has failed to these recipients or (?:groups|distribution lists)"
    r"|the original message was received at|unable to deliver (?:the )?message to the following"
    r"|message could not be delivered|could not be delivered to the following"
    r"|your message (?:could not|cannot|can't|was not|wasn't) (?:be )?deliver"
    r"|your (?:e-?mail|message) (?:to .{1,120} )?(?:has been|was) (?:rejected|returned|blocked|bounced)"
    r"|the mail system will continue delivery attempts|message will be retried for"
    r"|permanent error\.? the following address(?:es)? failed|a message that you sent could not be delivered"
    r"|a message that you sent has not yet been delivered|message delivery to .{1,120} failed"
    r"|the following message to .{1,200} was undeliverable|delivery to the following recipient has been delayed"
    r"|there was a temporary problem delivering your message|delivery (?:of your message )?has (?:failed|been delayed)"
    r"|was not delivered to|wasn't delivered to|couldn't be delivered|could not deliver (?:the )?(?:mail|message)"
    r"|message (?:was )?(?:not|never) delivered|undeliverable (?:message|mail)|has been rejected by"
    r"|an error occurred while trying to deliver|the following recipients? (?:was|were|could not be|are) "
    r"|each of the following recipients was rejected|(?:host|mx) .{1,200} said:"
    r"|all relevant mx records point to non-existent hosts|smtp error from remote (?:mail server|mailer)"
    r"|retry timeout exceeded|mail (?:was|is) undeliverable|message you sent (?:was|has been) blocked"
    r"|returned mail|mail delivery (?:failed|failure)|delivery status notification"
    r"|your message was rejected|reporting-mta:|final-recipient:|diagnostic-code:"
    r"|transcript of (?:the )?session follows|requested action not taken|invalid user address"
    r"|this report relates to (?:a )?message you sent|failed to deliver|impossible to deliver"
    r"|not able to deliver|delivery failed|non-delivery|could not be reached|not (?:a )?valid (?:e-?mail )?recipient"
    r"|ist fehlgeschlagen|konnte nicht (?:zugestellt|ausgeliefert)|n'a pas pu être (?:remis|distribu)"
    r"|no (?:se )?(?:ha )?podido (?:ser )?entregar|non è stato possibile recapitare|не (?:может быть|удалось|было) доставлен"
    r"|配信できません|送信できません|届きませんでした|宛先不明|配送できません)",
    re.I,
)
# Failure reasons: frequent in bounces but also in human discussion, so only supporting.
BOUNCE_PHRASE_WEAK = re.compile(
    r"(?:user unknown|unknown user|unable to find user|no such (?:user|mailbox|recipient|address)|mailbox (?:is )?(?:full|unavailable)"
    r"|over quota|quota exceeded|relay(?:ing)? denied|host unknown|recipient (?:address )?rejected"
    r"|does not exist|address rejected|mailbox not found|account (?:is )?(?:disabled|inactive)"
    r"|connection timed out|message size exceeds|spam|blocked|deferred|expired)",
    re.I,
)
# A line that starts a copy of the returned message, in whatever wording.
ORIGINAL_MARKER = re.compile(
    r"^[ \t>*=_-]*(?:original message|(?:this is )?a copy of (?:the|your) message|below this line is a copy"
    r"|returned message|the (?:original|returned|undelivered) message|message headers follow|original headers"
    r"|unsent message|headers of the (?:original|returned) message|text of the original|returned mail"
    r"|the message you sent|original mail|here is a copy|-+\s*original)",
    _I,
)

# RFC 3834 and the de-facto auto-responder headers.
AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-auto-reply", "x-autorespond-from",
                "x-vacation", "x-mailautoreply")
# Explicit auto-reply subjects (worth as much as an Auto-Submitted header) ...
AUTO_SUBJECT_STRONG = re.compile(
    r"^(?:auto(?:matic|matische?)?[ -]?(?:reply|response|respons|antwort|answer|réponse|respuesta|risposta|svar)"
    r"|auto:|autoreply|autoresponse|out of (?:the )?office|ooo\b|abwesenheitsnotiz|réponse automatique"
    r"|respuesta automática|risposta automatica|automatisch antwoord|automaattinen vastaus|autosvar"
    r"|odpowiedź automatyczna|автоответ|自動応答|.{0,80}\bis out of the office)",
    re.I,
)
# ... and the vaguer ones that need a second signal.
AUTO_SUBJECT = re.compile(
    r"^(?:away from (?:the )?office|vacation|on vacation|abwesenheit|abwesend|fuera de la oficina"
    r"|absence|absent|afwezig|poza biurem|frånvaro|不在|away until|i am away|i'm away"
    r"|.{0,60}\bon leave|.{0,60}\bout of office\b|thank you for your (?:e-?mail|message)"
    r"|we have received your|your (?:e-?mail|message) has been received)",
    re.I,
)
REPLY_PREFIX = re.compile(r"^(?:re|fw|fwd|aw|wg|sv|vs|antw|tr|rif|r)\s*(?:\[\d+\])?\s*:", re.I)
LIST_TAG = re.compile(r"^\s*\[[^\]]{1,60}\]\s*")
AUTO_BODY = re.compile(
    r"(?:out of (?:the )?office|i (?:am|will be) (?:currently )?(?:away|out|on (?:vacation|holiday|leave|annual leave)"
    r"|travell?ing|not in the office|unavailable)|away from (?:my|the) (?:e-?mail|mail|office|desk)"
    r"|will not return until|(?:limited|no) access to (?:my )?e-?mail|i will (?:reply|respond|get back)"
    r" .{0,40}(?:return|when i'?m back)|on vacation until|this is an auto(?:matic|mated)?[- ]?(?:reply|response|generated)"
    r"|automatic(?:ally)? (?:generated )?(?:reply|response)|bin (?:bis|vom) .{0,60}(?:abwesend|nicht im büro)"
    r"|je suis absent|estaré fuera|sono assente|ik ben afwezig|vielen dank für ihre (?:e-?mail|nachricht)"
    r"|thank you for (?:your|contacting)|we have received your (?:e-?mail|message|request))",
    re.I,
)

# Challenge-response systems (TMDA, ChoiceMail, SpamArrest, Boxbe, Bluebottle, Mailblocks...).
# Not X-TMDA-Fingerprint: TMDA stamps it on its users' ordinary outgoing mail too.
CHALLENGE_HEADERS = ("x-tmda-confirm", "x-choicemail", "x-spamarrest",
                     "x-boxbe-challenge", "x-challenge", "x-challenge-response", "x-mailblocks",
                     "x-bluebottle-request", "x-cr-challenge")
CHALLENGE_SUBJECT = re.compile(
    r"(?:please confirm your (?:e-?mail|message)|confirm (?:your|that you)|verification (?:required|needed|request)"
    r"|verify (?:your|that you)|requires? (?:your )?(?:verification|confirmation)|awaiting (?:your )?(?:verification|confirmation)"
    r"|\[tmda\]|spam ?arrest|choicemail|boxbe|action required.{0,40}deliver|your message .{0,80}is (?:pending|held|awaiting)"
    r"|sender verification|message held|approve your message|challenge)",
    re.I,
)
CHALLENGE_BODY = re.compile(
    r"(?:(?:verify|confirm|prove) (?:that )?you are (?:a )?(?:human|real person|person|not a (?:spam ?)?(?:bot|robot|machine|spammer))"
    r"|(?:i|we) use (?:a )?(?:spam[- ]?filter(?:ing)? .{0,30})?(?:challenge[- /]response|sender verification)"
    r"|protected by (?:spam ?arrest|choicemail|boxbe|tmda|mailblocks|bluebottle|a challenge)"
    r"|(?:before|in order for|so that) (?:your|this) (?:e-?mail|message) (?:can|will|to) (?:be )?(?:delivered|reach)"
    r"|(?:to have|for) your (?:e-?mail|message) (?:be )?delivered,? (?:please )?(?:click|reply|visit|confirm|go to)"
    r"|(?:added|add you) to (?:my|the) (?:approved senders?|allowed senders?|whitelist|safe senders?)"
    r"|one[- ]time (?:verification|confirmation)|(?:held|is being held|has been held) (?:in (?:a |my )?(?:queue|quarantine)|pending)"
    r"|reply to this (?:message|e-?mail) (?:without changing|to confirm)|unverified sender|pending your confirmation)",
    re.I,
)
CONFIRM_URL = re.compile(r"https?://\S{0,200}(?:confirm|verif|challenge|approve|captcha|validate)", re.I)

# Status codes. Enhanced codes per RFC 3463; SMTP reply codes per RFC 5321 §4.2.
ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d]|\.\d)")
SMTP_CODE = re.compile(
    r"(?:^[ \t<>#*:-]*|said:\s*|said\s+|error[:\s]+|response:?\s*|reply:?\s*|smtp;\s*|code:?\s*|\(\s*|\[\s*"
    r"|answered\s+|returned\s+|status:?\s*|reason:\s*)([245][0-5]\d)(?=[ \t-]|$)",
    _I,
)

ADDRESS = re.compile(
    r"(?<![\w.+=/-])([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+)"
    r"(?![\w-]|\.[A-Za-z0-9])"
)
MESSAGE_ID = re.compile(r"<([^<>\s@]{1,250}@[^<>\s]{1,250})>")

# Provider-specific feedback formats: Microsoft JMRP marks the attached original; Apple Mail
# sends one-click unsubscribe requests; Amazon SES/SNS posts JSON notifications.
JMRP_HEADER = "x-hmxmroriginalrecipient"
SES_JSON = re.compile(r'\\?"notificationType\\?"\s*:\s*\\?"(Bounce|Complaint|Delivery)')
SES_RECIPIENT = re.compile(
    r'\\?"(?:bouncedRecipients|complainedRecipients|recipients)\\?"\s*:\s*\[(.{0,4000}?)\]', re.S)
SES_MESSAGE_ID = re.compile(r'\\?"mail\\?"\s*:\s*\{.{0,2000}?\\?"messageId\\?"\s*:\s*\\?"([^"\\]{1,250})', re.S)
SES_SOURCE = re.compile(r'\\?"source\\?"\s*:\s*\\?"([^"\\]{1,250})')


# --- literal pre-filters ----------------------------------------------------------------------
# Python's `re` tries every branch of a big case-insensitive alternation at every position of
# the text, which made the body-phrase scans above the classifier's main cost. Each phrase
# pattern is therefore guarded by a set of literals derived from the pattern itself: every
# possible match contains at least one of them (case-folded), so when none occurs in the
# folded text the pattern cannot match and the scan is skipped. The literals are computed
# from the regex parse tree at import, so editing a pattern above needs no second edit here.

def _build_fold() -> dict[int, int | str]:
    """Translation making str.lower() agree with re.IGNORECASE's notion of equal characters."""
    table: dict[int, int | str] = {0x130: "i"}  # 'İ'.lower() is two characters; re compares to 'i'
    try:
        from re._casefix import _EXTRA_CASES  # e.g. ſ ~ s, ı ~ i, ς ~ σ (Python 3.11+)
    except Exception:  # pragma: no cover - other Python versions: a conservative fixed list
        _EXTRA_CASES = {0x69: (0x131,), 0x73: (0x17F,), 0x3C3: (0x3C2,), 0x3B9: (0x345, 0x1FBE),
                        0x3B2: (0x3D0,), 0x3B5: (0x3F5,), 0x3B8: (0x3D1,), 0x3BA: (0x3F0,),
                        0x3C0: (0x3D6,), 0x3C1: (0x3F1,), 0x3C6: (0x3D5,), 0xB5: (0x3BC,),
                        0x1E61: (0x1E9B,), 0x432: (0x1C80,), 0x434: (0x1C81,), 0x43E: (0x1C82,),
                        0x441: (0x1C83,), 0x442: (0x1C84, 0x1C85), 0x44A: (0x1C86,),
                        0x463: (0x1C87,), 0xA64B: (0x1C88,), 0x1E9E: (0xDF,)}
    groups: dict[int, set[int]] = {}
    for key, others in _EXTRA_CASES.items():
        members = {key, *others}
        for m in list(members):
            members |= groups.get(m, set())
        for m in members:
            groups[m] = members
    for cp, members in groups.items():
        canonical = min(members)
        if cp != canonical:
            table[cp] = canonical
    return table


_FOLD = _build_fold()


def fold(text: str) -> str:
    """Case-fold for the literal pre-filters (same length as `text` in practice)."""
    return text.translate(_FOLD).lower().translate(_FOLD)


def _cover(seq: object) -> frozenset[str] | None:
    """Literals of which every match of the parsed sequence contains at least one, or None."""
    try:
        from re import _constants as C
    except ImportError:  # pragma: no cover
        import sre_constants as C  # type: ignore[no-redef]
    candidates: list[frozenset[str]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            candidates.append(frozenset({fold("".join(run))}))
            run.clear()

    for op, av in seq:  # type: ignore[attr-defined]
        if op is C.LITERAL:
            run.append(chr(av))
            continue
        flush()
        sub: frozenset[str] | None = None
        if op is C.BRANCH:
            alts = [_cover(alt) for alt in av[1]]
            if alts and all(a is not None for a in alts):
                sub = frozenset().union(*alts)  # type: ignore[arg-type]
        elif op is C.SUBPATTERN:
            sub = _cover(av[3])
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT) and av[0] >= 1:
            sub = _cover(av[2])
        if sub:
            candidates.append(sub)
    flush()
    if not candidates:
        return None
    # The most selective cover: longest shortest literal, then fewest literals.
    return max(candidates, key=lambda c: (min(map(len, c)), -len(c)))


def literal_cover(pattern: re.Pattern[str]) -> frozenset[str] | None:
    try:
        from re import _parser as P
    except ImportError:  # pragma: no cover
        import sre_parse as P  # type: ignore[no-redef]
    try:
        cover = _cover(P.parse(pattern.pattern, pattern.flags))
    except Exception:  # pragma: no cover - unknown parser internals: never filter
        return None
    # Covers made of one- or two-character literals would filter almost nothing.
    if cover is None or min(map(len, cover)) < 3:
        return None
    return cover


class Guarded:
    """A compiled pattern plus its literal pre-filter; `folded` is fold() of a superset text."""

    __slots__ = ("pattern", "cover")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.cover = literal_cover(pattern)

    def possible(self, folded: str) -> bool:
        cover = self.cover
        return cover is None or any(lit in folded for lit in cover)

    def search(self, text: str, folded: str) -> re.Match[str] | None:
        return self.pattern.search(text) if self.possible(folded) else None

    def finditer(self, text: str, folded: str) -> list[re.Match[str]]:
        return list(self.pattern.finditer(text)) if self.possible(folded) else []


G_BOUNCE_PHRASE_STRONG = Guarded(BOUNCE_PHRASE_STRONG)
G_BOUNCE_PHRASE_WEAK = Guarded(BOUNCE_PHRASE_WEAK)
G_AUTO_BODY = Guarded(AUTO_BODY)
G_CHALLENGE_BODY = Guarded(CHALLENGE_BODY)
G_CONFIRM_URL = Guarded(CONFIRM_URL)
G_SES_JSON = Guarded(SES_JSON)
