"""Pattern tables for the bounce classifier: senders, subjects and body phrases.

Written from the RFCs and from reading real bounces (the sisimai corpus, SpamAssassin ham):
each pattern names a wording that MTAs actually emit. Kept apart from the logic so new
wordings are a one-line change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

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

# A From field whose address is empty ("Jetmail System" <>): only notifications are sent that way.
EMPTY_ADDRESS = re.compile(r"<\s*>")
# A list's administrative address: where list managers send and relay notices, never posts.
LIST_ADMIN = re.compile(r"(?:(?:^|[\s<,\"])owner-[^@\s<>,]*|-(?:admin|bounces?|owner|request)(?:\+[^@\s<>,]*)?)@", re.I)

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
    r"|mail error|mail delivery warning|warning: message .{0,80}not (?:yet )?been delivered"
    r"|your (?:message|mail|e-?mail) .{0,160}(?:could not|cannot|can't|was not|has not been) (?:be )?delivered"
    # content filters answering with a notice instead of a rejection: backscatter all the same
    r"|(?:\**\s*)?(?:virus|viruses|malware) (?:found|detected|alert|warning)|(?:banned|blocked) (?:attachment|file|content)"
    r"|(?:e-?mail|message|attachment) (?:blocked|quarantined|rejected)|undeliverable message|delivery status"
    # French, German, Dutch, Italian, Spanish, Portuguese, Polish, Swedish, Czech, Russian, Japanese
    r"|non remis|non distribu|échec de (?:la )?remise|impossible de remettre|unzustellbar"
    r"|nicht zustellbar|unzustellbare|benachrichtigung zum übermittlungsstatus|onbestelbaar"
    r"|niet bezorgd|non recapitabile|mancato recapito|no se puede entregar|no entregado"
    r"|notificación de estado de (?:la )?entrega|não (?:foi possível )?entreg|mensagem não entregue"
    r"|niedostarczon|nie można dostarczyć|olevererbart|kan inte levereras|nedoručiteln"
    r"|ваше сообщение не доставлено|недоставленное сообщение|не доставлено"
    r"|メッセージを配信できません|配信エラー|配送エラー|未配達|送信できませんでした"
    r"|傳遞失敗|退信|邮件退回|系统退信|邮件无法投递|无法投递"
    r")",
    re.I,
)
# Wordings an MTA appends to the original's subject ("RE: Lunch : non remis (delivery failed)").
BOUNCE_SUBJECT_TAIL = re.compile(
    r"(?:\(delivery failed\)|: non remis|: undeliverable|\(undeliverable\)|: unzustellbar|\(unzustellbar\)"
    r"|: delivery failure|- delivery failed|: returned to sender)\s*$",
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
    r"|配信できません|送信できません|届きませんでした|宛先不明|配送できません|无法发送|无法送达|无法投递)",
    re.I,
)
# More MTA wordings, kept apart from the pattern above so that the pre-filter searches each
# table only around its own literals: old MTAs (Exchange IMS, GroupWise, Lotus, CommuniGate,
# Yahoo, AOL, qmail, MDaemon), content filters' virus / blocked-attachment notices, more languages.
BOUNCE_PHRASE_MORE = re.compile(
    r"(?:created by mail delivery software|(?:has|have) not (?:yet )?been delivered|(?:cannot|can't|couldn't) be delivered to"
    r"|(?:the following|this|your) (?:e-?mail|mail|message) (?:has been|was|is being) returned"
    r"|(?:will|shall) continue (?:to try|trying|to attempt|attempting) (?:to )?deliver|has been postponed"
    r"|no (?:such )?(?:user|mailbox|account) (?:here )?by that name|no such user here|not a valid user here"
    r"|is (?:wrong|invalid) or no longer valid|this (?:e-?mail )?address is no longer (?:valid|in use|active)"
    r"|you sent mail to .{1,200} that's not|your mail cannot be delivered|(?:could not|cannot) be delivered"
    r"|(?:contained|contains|was infected with|is infected with|detected) (?:a |the )?(?:virus|worm|malware)"
    r"|virus (?:was )?(?:found|detected) in|attachment (?:has been|was|were) (?:removed|blocked|stripped|quarantined|deleted)"
    r"|(?:blocked|banned|prohibited|disallowed) (?:attachment|file (?:type|name|extension))"
    r"|message (?:has been|was) (?:quarantined|blocked|deleted) (?:by|because|due)"
    r"|nie (?:mógł|można|może) (?:zostać )?dostarcz|nevarēja (?:piegādāt|nogādāt)|kunde inte levereras"
    r"|nemohla být doručena|nelze doručit|kon niet (?:worden )?(?:bezorgd|afgeleverd)|não pôde ser entregue"
    r"|no pudo ser entregado|non è stato recapitato|n'a pas pu être (?:livré|délivré))",
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
    r"|odpowiedź automatyczna|автоответ|自動応答|.{0,80}\bis out of the office"
    # Outlook/Exchange, Gmail, Yahoo and webmail auto-reply prefixes in their localised forms
    r"|(?:yahoo!? )?auto[- ]?(?:response|reply)|automatyczna odpowied[źz]|automātiskā atbilde|automātiska atbilde"
    r"|automatická odpověď|automatická odpoveď|automatikus válasz|otomatik (?:yanıt|cevap)|automatinis atsakymas"
    r"|automaatvastus|răspuns automat|αυτόματη απάντηση|автоматический ответ|автоматична відповідь"
    r"|автоматичен отговор|automatski odgovor|samodejni odgovor|automatisk svar|automatisches antwortschreiben"
    r"|resposta automática|risposta automatica|réponse automatique|respuesta automática|automatische antwort"
    r"|自动回复|自動回覆|自動返信|自动答复|자동 회신|자동 응답|ตอบกลับอัตโนมัติ|trả lời tự động"
    r"|fuera de la oficina|out of office|abwesenheit|absence du bureau|afwezigheidsbericht|poza biurem)",
    re.I,
)
# ... and the vaguer ones that need a second signal.
AUTO_SUBJECT = re.compile(
    r"^(?:away from (?:the )?office|vacation|on vacation|abwesenheit|abwesend|fuera de la oficina"
    r"|absence|absent|afwezig|poza biurem|frånvaro|不在|away until|i am away|i'm away"
    r"|urlaub|ferien|congés|vacances|vacaciones|ferie|vakantie|férias|urlop|atvaļinājum|dovolená"
    r"|отпуск|休暇|休假|out of the office|not in the office|nicht im büro|hors du bureau|fuori ufficio|ausente|fora do escritório"
    r"|.{0,60}\bon leave|.{0,60}\bout of office\b|thank you for your (?:e-?mail|message)"
    r"|we have received your|your (?:e-?mail|message) has been received)",
    re.I,
)
# X-Mailer values of auto-responder programs and webmail vacation features.
AUTO_MAILER = re.compile(r"auto[- ]?respon|auto[- ]?reply|vacation|out[- ]of[- ]office|abwesenheit", re.I)
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
# The same in other languages (first person, as people write their notices); apart, like
# BOUNCE_PHRASE_MORE, so each table is searched only around its own literals.
AUTO_BODY_INTL = re.compile(
    r"(?:(?:ich bin|bin ich) (?:bis|vom|ab|derzeit|zurzeit|momentan|leider) .{0,60}(?:abwesend|nicht (?:im (?:büro|haus)|erreichbar)|im urlaub)"
    r"|ich bin (?:im urlaub|abwesend|nicht im büro|außer haus)"
    r"|je (?:suis|serai) (?:absente?|en (?:congés?|vacances)|hors du bureau|en déplacement)"
    r"|(?:estoy|estaré) (?:fuera|ausente|de vacaciones)"
    r"|(?:sono|sarò) (?:fuori (?:ufficio|sede)|assente|in (?:ferie|vacanza))"
    r"|ik ben (?:afwezig|niet (?:op kantoor|aanwezig|bereikbaar)|met vakantie)"
    r"|(?:estou|estarei) (?:fora|ausente|de férias)"
    r"|jestem (?:poza biurem|nieobecn|na urlopie)|będę nieobecn"
    r"|esmu atvaļinājumā|atrodos atvaļinājumā|nebūšu (?:birojā|pieejam)"
    r"|jag är (?:på semester|ledig|tjänstledig|borta|inte på kontoret)"
    r"|jsem (?:mimo kancelář|na dovolené|nepřítomn)"
    r"|я (?:в отпуске|нахожусь в отпуске|отсутствую)|меня нет в офисе"
    r"|不在にしております|休暇中|我(?:正在|目前)?(?:休假|不在办公室))",
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
# Challenges sent as an ordinary message (EarthLink spamBlocker, Boxbe, Mailblocks style).
CHALLENGE_PLAIN = re.compile(
    r"(?:(?:i am|i'm) (?:protecting myself|using .{1,60} to protect myself) from (?:receiving )?(?:junk|spam|unsolicited)"
    r"|(?:just this once|only this once),? (?:please )?(?:click|go to|visit|reply)"
    r"|you (?:won't|will not) (?:have|need) to do this again|so (?:that )?i can receive your (?:e-?mails?|messages?))",
    re.I,
)
CONFIRM_URL = re.compile(r"https?://\S{0,200}(?:confirm|verif|challenge|approve|captcha|validate)", re.I)

# Status codes. Enhanced codes per RFC 3463; SMTP reply codes per RFC 5321 §4.2.
# Every ENHANCED match contains "[245].digit" (what this finds), so it is a cheap necessary
# condition. It opens with the literal "." (the [245] is checked by the look-behind) because `re`
# scans for a literal first character in a tight loop but tries a set like [245] at every position.
ENHANCED_HINT = re.compile(r"\.(?<=[245]\.)\d")
ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d]|\.\d)")


def enhanced_matches(text: str) -> Iterator[re.Match[str]]:
    """The matches of ENHANCED.finditer(text), tried only where ENHANCED_HINT finds "[245].digit".

    ENHANCED opens with a look-behind, so `re` cannot scan for its first character and tries
    it at every position. Every match starts one character before a hint, and the hints are
    found by a fast literal scan; a match tried with ENHANCED.match(text, start) sees the same
    characters (look-behind and look-ahead read the whole string), and walking the hints in
    order from where the last match ended is finditer's own rule.
    """
    pos = 0
    while True:
        hint = ENHANCED_HINT.search(text, pos + 1)
        if hint is None:
            return
        m = ENHANCED.match(text, hint.start() - 1)
        if m is not None:
            yield m
            pos = m.end()
        else:
            pos = hint.start()
SMTP_CODE = re.compile(
    r"(?:^[ \t<>#*:-]*|said:\s*|said\s+|error[:\s]+|response:?\s*|reply:?\s*|smtp;\s*|code:?\s*|\(\s*|\[\s*"
    r"|answered\s+|returned\s+|status:?\s*|reason:\s*)([245][0-5]\d)(?=[ \t-]|$)",
    _I,
)

# SMTP_CODE tries its ~15 prefixes at every position of the text, which made it most of the
# extraction time of a bounce. Every match ends in a 3-digit code (_CODE finds those with one
# fast scan), and what precedes the code is a prefix of at most _CODE_KEYWORD characters of
# keyword ("response", "smtp;") followed by a run of whitespace and _CODE_LEAD characters (or,
# for the "^" branch, a run of _CODE_LEAD alone). So a match ending at a code starts no earlier
# than _CODE_KEYWORD characters before that run, and smtp_codes searches only there.
_CODE = re.compile(r"[245][0-5]\d(?=[ \t-]|$)", re.M)
_CODE_LEAD = frozenset(" \t<>#*:-")
_CODE_KEYWORD = 9


def smtp_codes(text: str) -> list[str]:
    """[m.group(1) for m in SMTP_CODE.finditer(text)], reading only the text around the codes.

    Matches cannot overlap a code they do not end at (prefixes hold no digit), so walking the
    codes in order with finditer's own rule (the next search starts where the last match ended)
    gives the same matches: per code, the leftmost match that ends at it, if any. The window
    reaches one character past the code, so the look-ahead sees the same character as in the
    whole text.
    """
    out: list[str] = []
    pos = 0
    end = len(text)
    while True:
        code = _CODE.search(text, pos)
        if code is None:
            return out
        at = code.start()
        lead = at
        while lead > pos and (text[lead - 1].isspace() or text[lead - 1] in _CODE_LEAD):
            lead -= 1  # \s in a str pattern is exactly str.isspace()
        m = SMTP_CODE.search(text, max(pos, lead - _CODE_KEYWORD), min(end, at + 4))
        if m is not None:
            out.append(m.group(1))
            pos = m.end()
        else:
            pos = at + 3

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
_FOLD_CHARS = re.compile("[" + "".join(re.escape(chr(c)) for c in _FOLD if c != 0x130) + "]")


def fold(text: str) -> str:
    """Case-fold for the literal pre-filters; never changes the length of the text."""
    if text.isascii():
        return text.lower()
    if "\u0130" in text:
        text = text.replace("\u0130", "i")
    low = text.lower()
    return low.translate(_FOLD) if _FOLD_CHARS.search(low) else low


def _constants():  # type: ignore[no-untyped-def]
    try:
        from re import _constants as C
    except ImportError:  # pragma: no cover
        import sre_constants as C  # type: ignore[no-redef]
    return C


_MAX_SET = 64  # bound on the strings a cover may enumerate


def _fixed(op: object, av: object) -> frozenset[str] | None:
    """The finite set of strings one parsed element can match (as written), or None."""
    C = _constants()
    if op is C.LITERAL:
        return frozenset({chr(av)})  # type: ignore[arg-type]
    if op is C.BRANCH:
        out: set[str] = set()
        for alt in av[1]:  # type: ignore[index]
            sub = _fixed_seq(alt)
            if sub is None:
                return None
            out |= sub
            if len(out) > _MAX_SET:
                return None
        return frozenset(out)
    if op is C.SUBPATTERN:
        return _fixed_seq(av[3])  # type: ignore[index]
    if op is C.MAX_REPEAT or op is C.MIN_REPEAT:
        lo, hi, item = av  # type: ignore[misc]
        if (lo, hi) in ((0, 1), (1, 1)):
            sub = _fixed_seq(item)
            if sub is None:
                return None
            return sub | {""} if lo == 0 else sub
    return None


def _fixed_seq(seq: object) -> frozenset[str] | None:
    out = frozenset({""})
    for op, av in seq:  # type: ignore[attr-defined]
        sub = _fixed(op, av)
        if sub is None or len(out) * len(sub) > _MAX_SET:
            return None
        out = frozenset(a + b for a in out for b in sub)
    return out


def _cover(seq: object) -> frozenset[str] | None:
    """Literals of which every match of the parsed sequence contains at least one, or None.

    Candidates: each maximal run of consecutive fixed-string elements (their concatenations,
    e.g. `i (?:am|will be) away` → {"i am away", "i will be away"}), and each mandatory group
    whose alternatives all have covers. The most selective candidate wins.
    """
    C = _constants()
    candidates: list[frozenset[str]] = []
    run = frozenset({""})

    def flush() -> None:
        nonlocal run
        if run != frozenset({""}):
            candidates.append(frozenset(fold(x) for x in run))
        run = frozenset({""})

    for op, av in seq:  # type: ignore[attr-defined]
        fixed = _fixed(op, av)
        if fixed is not None:
            if len(run) * len(fixed) > _MAX_SET:
                flush()
            run = frozenset(a + b for a in run for b in fixed)
            if op is not C.LITERAL:
                # also keep the group on its own: a long run may end up bounded by _MAX_SET
                candidates.append(frozenset(fold(x) for x in fixed))
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


def _window_width(pattern: re.Pattern[str]) -> int | None:
    """Longest possible match, if the pattern can be searched in windows around its literals.

    That needs a bounded width and no assertions (anchors, word boundaries, lookarounds): then
    a match reads only the characters it spans, so searching the text cut to the windows finds
    exactly the matches (same spans, same alternatives) that searching the whole text finds.
    """
    try:
        from re import _constants as C, _parser as P
    except ImportError:  # pragma: no cover
        return None
    unsafe = {C.AT, C.ASSERT, C.ASSERT_NOT, C.GROUPREF, C.GROUPREF_EXISTS}

    def safe(seq: object) -> bool:
        for op, av in seq:  # type: ignore[attr-defined]
            if op in unsafe:
                return False
            if op is C.BRANCH and not all(safe(alt) for alt in av[1]):
                return False
            if op is C.SUBPATTERN and not safe(av[3]):
                return False
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)) and not safe(av[2]):
                return False
            if op is getattr(C, "ATOMIC_GROUP", None) and not safe(av):
                return False
        return True

    try:
        tree = P.parse(pattern.pattern, pattern.flags)
        width = tree.getwidth()[1]
        if not safe(tree) or width >= C.MAXREPEAT or width > 4096:
            return None
        return width
    except Exception:  # pragma: no cover
        return None


_WORD = re.compile(r"\w+")


# words() reads the folded text as bytes: \w is exactly [A-Za-z0-9_] among ASCII characters, so
# ASCII non-word bytes become spaces (runs holding non-ASCII characters are split by the regex
# afterwards). ASCII digits become spaces too: no index token holds one (Guarded indexes a
# literal that does under ""), and then lines that differ only in their numbers, such as
# smtp-source's "La de da de da 17.", are the same line (see _distinct_lines). Line ends stay.
_WORD_BYTES = bytes(b if b >= 0x80 or b == 0x0A or chr(b).isalpha() or b == 0x5F else 0x20
                    for b in range(256))
_DIGIT = re.compile(r"[0-9]")


def _distinct_lines(data: bytes) -> bytes:
    """`data` with every line kept once: the same set of words (order does not matter to a
    vocabulary, and a line end separates words like a space).

    Generated mail repeats lines (load generators, repeated separators; smtp-source's numbered
    "La de da de da 17." or "1XXXX...": the digits are blanks here, so the lines are equal), and
    reading the copies costs a Python object per word. Splitting at line ends and a set of the
    lines run in C.
    """
    lines = data.split(b"\n")
    if len(lines) < 8:  # too few to repeat much
        return data
    return b"\n".join(set(lines))


class Vocabulary:
    """The whole words of a folded text (maximal \\w runs, split also at ASCII digits), and all
    of them joined in one string (every substring of a word of the text is a substring of
    `joined`).

    For a token without ASCII digits (every index token) the answers are safe: whether it is
    part of some word is exact (its occurrences never touch a digit), and a whole word of the
    text is one here too ("mailbox" in "mailbox2" is one more, harmless: the pre-filter may
    only let more literals through)."""

    __slots__ = ("_joined", "_pieces", "ascii", "words")

    def __init__(self, words: frozenset[str], ascii: bool = False) -> None:
        self.words = words
        self.ascii = ascii  # every word is ASCII: no non-ASCII piece can be part of one
        self._joined: str | None = None
        self._pieces: dict[str, bool] = {}

    def has_piece(self, piece: str) -> bool:
        """Whether `piece` is part of some word (memoised: many literals share their ends)."""
        found = self._pieces.get(piece)
        if found is None:
            found = self._pieces[piece] = piece in self.words or piece in self.joined
        return found

    def pieces_present(self, pieces: frozenset[str]) -> frozenset[str]:
        """The members of `pieces` that are part of some word: whole words by one set
        intersection, only the rest by a substring search (cheaper than has_piece on each)."""
        whole = pieces & self.words
        if len(whole) == len(pieces):
            return whole
        joined = self.joined
        return whole | {piece for piece in pieces - whole if piece in joined}

    @property
    def joined(self) -> str:
        if self._joined is None:
            self._joined = "\x00".join(self.words)
        return self._joined


def words(folded: str) -> Vocabulary:
    """Vocabulary of a folded text, for the pre-filters' word checks."""
    try:
        ascii = folded.isascii()
        data = folded.encode("ascii") if ascii else folded.encode("utf-8", "surrogatepass")
        runs = _distinct_lines(data.translate(_WORD_BYTES))
        if ascii:
            return Vocabulary(frozenset(runs.decode("ascii").split()), True)
        out: set[str] = set()
        for run in set(runs.split()):
            if run.isascii():
                out.add(run.decode("ascii"))
            else:
                out.update(_WORD.findall(run.decode("utf-8", "surrogatepass")))
        return Vocabulary(frozenset(out))
    except UnicodeError:  # pragma: no cover - defensive
        return Vocabulary(frozenset(_WORD.findall(_DIGIT.sub(" ", folded))))


def _inner_words(literal: str) -> frozenset[str]:
    """Words *inside* a literal (not touching its ends): whole words of any text containing it."""
    return frozenset(m.group(0) for m in _WORD.finditer(literal) if m.start() > 0 and m.end() < len(literal))


# Words nearly every English text has: indexing a literal under one of them would make it a
# candidate for almost every message, so they are the last choice of index key.
_COMMON_WORDS = frozenset("""
    a about after all also am an and any are as at back be been before but by can could did do
    for from had has have he her him his how i if in into is it its just me more my no not now of
    on one only or our out over said she so some than that the their them then there these they
    this time to up us was we were what when which who will with would you your
""".split())


def _index_key(inner: frozenset[str], ends: tuple[str, ...]) -> tuple[bool, str]:
    """How to index a literal: (whether the key is an inner word, the key).

    The key is the token least likely to be in an ordinary text: an uncommon inner word (a
    whole word of the text: one hash probe), else an uncommon end piece (part of a word: a
    substring search), else the longest of them.
    """
    tokens = [(w not in _COMMON_WORDS, True, len(w), w) for w in sorted(inner)]
    tokens += [(w not in _COMMON_WORDS, False, len(w), w) for w in sorted(ends)]
    _, is_word, _, key = max(tokens, key=lambda t: t[:3])
    return is_word, key


_Entry = tuple[frozenset[str], tuple[str, ...], str]  # inner words, end pieces left to test, literal


class Guarded:
    """A compiled phrase pattern with a literal pre-filter.

    `folded` must be fold(text) (same length, same positions) and `vocabulary` the words() of
    the folded text or of a longer text it is a prefix of. A cover literal can occur only if
    all its inner words are words of the text and each of its end pieces is part of some word
    of the text; when no cover literal occurs the pattern cannot match. Otherwise only windows
    of +-width around the literal occurrences are searched (merged, disjoint): the same
    matches as a whole-text search.
    """

    __slots__ = ("ascii_piece_keys", "by_piece", "by_word", "cover", "pattern", "piece_keys", "width", "word_keys")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.cover = literal_cover(pattern)
        self.width = _window_width(pattern) if self.cover is not None else None
        # Per literal: its inner words (whole words of the text) and its end pieces (parts of
        # words of the text: "added" in "...added to the whitelist" may end "unadded"),
        # indexed by one of them so that a set operation per text picks the few literals
        # worth testing further.
        self.by_word: dict[str, list[_Entry]] = {}
        self.by_piece: dict[str, list[_Entry]] = {}
        for lit in sorted(self.cover or ()):
            inner = _inner_words(lit)
            ends = tuple(sorted({w for w in _WORD.findall(lit) if w not in inner}, key=len, reverse=True))
            if not inner and not ends:  # no word character: nothing to pre-test
                self.by_piece.setdefault("", []).append((inner, ends, lit))
                continue
            if _DIGIT.search(lit):  # the vocabulary has no digits: always a candidate
                self.by_piece.setdefault("", []).append((frozenset(), (), lit))
                continue
            is_word, key = _index_key(inner, ends)
            if is_word:
                self.by_word.setdefault(key, []).append((inner, ends, lit))
            else:
                rest = tuple(piece for piece in ends if piece != key)
                self.by_piece.setdefault(key, []).append((inner, rest, lit))
        # A frozenset, not by_word.keys(): `keys() & frozenset` walks the whole vocabulary, while
        # an intersection of two frozensets walks the smaller one (the few keys).
        self.word_keys = frozenset(self.by_word)
        self.piece_keys = frozenset(self.by_piece)
        # An ASCII text has no non-ASCII piece: its look-up skips them (other languages' words).
        self.ascii_piece_keys = frozenset(k for k in self.by_piece if k.isascii())

    def _candidates(self, vocabulary: Vocabulary) -> list[str]:
        """Cover literals that may occur in the text (a superset of those that do)."""
        vocab = vocabulary.words
        has_piece = vocabulary.has_piece
        candidates: list[str] = []
        for index, keys in ((self.by_word, self.word_keys & vocab),
                            (self.by_piece, vocabulary.pieces_present(
                                self.ascii_piece_keys if vocabulary.ascii else self.piece_keys))):
            for key in keys:
                for inner, ends, lit in index[key]:
                    if inner <= vocab and all(has_piece(piece) for piece in ends):
                        candidates.append(lit)
        return candidates

    def windows(self, text: str, folded: str, vocabulary: Vocabulary) -> list[tuple[int, int]] | None:
        """Disjoint (start, end) windows holding every possible match; None: search it all."""
        if self.cover is None or len(folded) != len(text):
            return None
        hits: list[tuple[int, int]] = []
        for lit in self._candidates(vocabulary):
            i = folded.find(lit)
            while i >= 0:
                hits.append((i, i + len(lit)))
                i = folded.find(lit, i + 1)
        if not hits:
            return []
        width = self.width
        if width is None:
            return None
        limit = len(text)
        hits.sort()
        merged: list[tuple[int, int]] = []
        for s, e in hits:
            lo, hi = max(0, s - width), min(limit, e + width)
            if merged and lo <= merged[-1][1]:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def exists(self, text: str, folded: str, vocabulary: Vocabulary) -> bool:
        """Whether pattern.search(text) would find a match."""
        windows = self.windows(text, folded, vocabulary)
        if windows is None:
            return self.pattern.search(text) is not None
        return any(self.pattern.search(text, lo, hi) for lo, hi in windows)

    def finditer(self, text: str, folded: str, vocabulary: Vocabulary) -> list[re.Match[str]]:
        """The matches of pattern.finditer(text)."""
        windows = self.windows(text, folded, vocabulary)
        if windows is None:
            return list(self.pattern.finditer(text))
        out: list[re.Match[str]] = []
        for lo, hi in windows:
            out.extend(self.pattern.finditer(text, lo, hi))
        return out


G_BOUNCE_PHRASE_STRONG = Guarded(BOUNCE_PHRASE_STRONG)
G_BOUNCE_PHRASE_WEAK = Guarded(BOUNCE_PHRASE_WEAK)
G_BOUNCE_PHRASE_MORE = Guarded(BOUNCE_PHRASE_MORE)
G_AUTO_BODY = Guarded(AUTO_BODY)
G_AUTO_BODY_INTL = Guarded(AUTO_BODY_INTL)
G_CHALLENGE_BODY = Guarded(CHALLENGE_BODY)
G_CHALLENGE_PLAIN = Guarded(CHALLENGE_PLAIN)
G_CONFIRM_URL = Guarded(CONFIRM_URL)


class Screened:
    """A pattern for short texts (a subject, a header value) behind a cheap necessary test.

    Every match contains a literal of the pattern's cover, so it contains every substring of
    that literal too: per literal its longest word (a literal without one stays whole), and of
    those only the ones that hold no other. If none occurs in fold(text) the pattern cannot
    match; the few `in` tests cost less than the regex's alternation at every position.
    """

    __slots__ = ("ascii_keys", "keys", "pattern")

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        cover = literal_cover(pattern)
        self.keys: tuple[str, ...] | None = None
        self.ascii_keys: tuple[str, ...] | None = None
        if cover is not None:
            keys = {max(_WORD.findall(lit), key=len, default=lit) for lit in cover}
            self.keys = tuple(sorted(k for k in keys if not any(o != k and o in k for o in keys)))
            # An ASCII text holds no non-ASCII key (other languages' words): not tested there.
            self.ascii_keys = tuple(k for k in self.keys if k.isascii())

    def may_match(self, folded: str) -> bool:
        """False only if the pattern cannot match the text whose fold() is `folded`."""
        if self.keys is None:
            return True
        for key in self.ascii_keys if folded.isascii() else self.keys:  # a loop: no generator
            if key in folded:
                return True
        return False

    def search(self, text: str, folded: str) -> re.Match[str] | None:
        return self.pattern.search(text) if self.may_match(folded) else None

    def match(self, text: str, folded: str) -> re.Match[str] | None:
        return self.pattern.match(text) if self.may_match(folded) else None


S_CHALLENGE_SUBJECT = Screened(CHALLENGE_SUBJECT)
S_AUTO_SUBJECT_STRONG = Screened(AUTO_SUBJECT_STRONG)
S_BOUNCE_SUBJECT_TAIL = Screened(BOUNCE_SUBJECT_TAIL)
S_AUTO_MAILER = Screened(AUTO_MAILER)
S_LIST_ADMIN = Screened(LIST_ADMIN)
