"""SMTP AUTH mechanisms (RFC 4954) as small pure functions: base64 lines in, credentials out.

PLAIN (RFC 4616) carries `authzid NUL authcid NUL passwd` in one base64 line; LOGIN (the
de-facto draft-murchison-sasl-login) asks for the user name and the password one line each.
Nothing here checks a password or logs anything: the caller does the first, never the second.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MECHANISMS = ("LOGIN", "PLAIN")  # as advertised in EHLO, sorted
# RFC 4954 §4: "*" alone cancels the exchange.
CANCEL = "*"
# draft-murchison-sasl-login: the challenges are base64 of "Username:" and "Password:".
LOGIN_USER_CHALLENGE = base64.b64encode(b"Username:").decode()
LOGIN_PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode()


class AuthSyntaxError(ValueError):
    """A response that is not what the mechanism expects; `reply` says so to the client."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


CANCELLED_REPLY = "501 5.7.0 Auth aborted"
BAD_BASE64_REPLY = "501 5.5.2 Can't decode base64"
BAD_PLAIN_REPLY = "501 5.5.2 Can't split auth value"


@dataclass(frozen=True, slots=True)
class Credentials:
    user: bytes
    password: bytes


def decode_response(line: str) -> bytes:
    """One client response line: base64, or '*' to cancel (RFC 4954 §4)."""
    if line == CANCEL:
        raise AuthSyntaxError(CANCELLED_REPLY)
    if line == "=":  # RFC 4954 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(line.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise AuthSyntaxError(BAD_BASE64_REPLY) from None


def plain_credentials(response: bytes) -> Credentials:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd. The authzid is ignored: a user acts as itself."""
    parts = response.split(b"\x00")
    if len(parts) != 3 or not parts[1]:
        raise AuthSyntaxError(BAD_PLAIN_REPLY)
    return Credentials(parts[1], parts[2])
