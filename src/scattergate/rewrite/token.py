"""The token header our outbound mail carries, so a bounce quoting it proves it is for our mail.

`X-Scattergate-Token: <hmac>` where hmac = first 16 hex digits of HMAC-SHA256(site secret,
lower-cased Message-ID without angle brackets). Pure functions.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from scattergate.rewrite.keys import Secret

HEADER = "X-Scattergate-Token"
_FIELD = re.compile(rb"^X-Scattergate-Token:[ \t]*([0-9a-f]{16})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def normalize_message_id(message_id: str) -> str:
    return message_id.strip().strip("<>").strip().lower()


def make(secret: Secret, message_id: str) -> str:
    digest = hmac.new(secret.reveal(), normalize_message_id(message_id).encode("utf-8", "replace"), hashlib.sha256)
    return digest.hexdigest()[:16]


def found_in(content: bytes, secret: Secret, message_id: str | None) -> bool:
    """Whether `content` (a bounce) quotes a token that is valid for `message_id`."""
    if not message_id:
        return False
    expected = make(secret, message_id).encode()
    return any(hmac.compare_digest(token.lower(), expected) for token in _FIELD.findall(content[:2_000_000]))
