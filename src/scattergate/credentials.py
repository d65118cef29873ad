"""SMTP AUTH users: a file of `user:hash` lines, scrypt password hashes, constant-time checks.

Hash format (one field, no colon): ``scrypt$N$r$p$salt$hash`` with salt and hash in unpadded
base64. The file holds hashes, not passwords, yet must still be private (mode 0600, refused
otherwise like the BATV/SRS secrets): a readable hash invites an offline guessing attack.
Passwords and hashes never appear in messages or reprs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from scattergate.rewrite.keys import SecretFileError, read_secret_file

# scrypt cost: about 16 MB and a few tens of milliseconds per check (run off the event loop).
_N, _R, _P = 2**14, 8, 1
_MAX_N = 2**20  # refuse absurd costs from a tampered file: each check would stall for seconds
_DKLEN = 32


class CredentialsError(ValueError):
    """The users file is unsafe or malformed; the message names the line, never its hash."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=_DKLEN)


def hash_password(password: str) -> str:
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode("utf-8"), salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


class _Hash:
    __slots__ = ("n", "r", "p", "salt", "digest")

    def __init__(self, text: str) -> None:
        scheme, n, r, p, salt, digest = text.split("$")
        if scheme != "scrypt":
            raise ValueError("unknown scheme")
        self.n, self.r, self.p = int(n), int(r), int(p)
        if not (2 <= self.n <= _MAX_N and self.n & (self.n - 1) == 0 and 1 <= self.r <= 32 and 1 <= self.p <= 4):
            raise ValueError("scrypt parameters out of range")
        self.salt, self.digest = _unb64(salt), _unb64(digest)
        if len(self.salt) < 8 or len(self.digest) != _DKLEN:
            raise ValueError("salt or hash of the wrong size")

    def matches(self, password: bytes) -> bool:
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p), self.digest)

    def __repr__(self) -> str:
        return "_Hash(<redacted>)"


# Checked when the user is unknown, so that the answer takes as long as for a known one.
_DUMMY = _Hash(f"scrypt${_N}${_R}${_P}${_b64(bytes(16))}${_b64(bytes(_DKLEN))}")


class Credentials:
    """The users allowed to AUTH. `verify` is CPU-bound: call it from a thread."""

    def __init__(self, users: dict[str, _Hash]) -> None:
        self._users = users

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"Credentials(<{len(self._users)} users>)"

    def verify(self, user: str, password: bytes) -> bool:
        stored = self._users.get(user)
        if stored is None:
            _DUMMY.matches(password)
            return False
        return stored.matches(password)


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    name = os.fspath(path)
    try:
        lines = read_secret_file(name)  # the 0600 rule, checked on the open descriptor
    except SecretFileError as exc:
        raise CredentialsError(str(exc).replace("secrets file", "users file")) from None
    users: dict[str, _Hash] = {}
    for number, line in enumerate(lines, start=1):
        user, sep, text = line.strip().partition(":")
        if not sep or not user:
            raise CredentialsError(f"{name}: entry {number} is not 'user:hash'")
        if user in users:
            raise CredentialsError(f"{name}: user {user!r} appears twice")
        try:
            users[user] = _Hash(text)
        except ValueError:
            raise CredentialsError(f"{name}: entry {number} ({user}) has no valid scrypt hash "
                                   "(make one with `scattergate passwd USER`)") from None
    return Credentials(users)
