"""SRS (Sender Rewriting Scheme), SRS0/SRS1 "guarded" scheme, interoperable with postsrsd/libsrs2.

  SRS0=HHHH=TT=orig-domain=orig-local@alias-domain
  SRS1=HHHH=first-hop-domain==opaque@alias-domain      (re-forwarding an SRS0 address)

  TT    day stamp: (days since epoch) mod 1024 as two base32 characters (A-Z, 2-7)
  HHHH  first `hash_length` characters of base64(HMAC-SHA1(secret, fields)), where the fields
        are ASCII-lower-cased and concatenated: TT+domain+local for SRS0, domain+opaque for SRS1.

postsrsd (2.2.6+) emits the base64url alphabet ('-' '_'); older libsrs2 users emit '+' '/'.
We emit base64url and accept both; hashes compare case-insensitively because some MTAs fold
the case of local parts. Error reasons carry postsrsd's message texts and its socketmap status
(NOTFOUND / PERM), so a postsrsd-compatible socketmap front end is a thin wrapper.

"Database mode" (postsrsd's original-envelope=database) keeps the original sender out of the
rewritten address: the address is stored under base32hex(SHA1(address)) and the SRS0 address
carries that alias with the pseudo-domain "1". The store is injected (`AliasStore`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from scattergate.rewrite.keys import Secret, SrsSecrets, as_secret

HASH_LENGTH = 4
MAX_AGE_DAYS = 21
MAX_INPUT = 512  # postsrsd refuses longer queries ("Too big.")
# Our forward output can exceed MAX_INPUT by the SRS overhead and alias domain; reverse must
# still take it back (postsrsd's socketmap would not: see socketmap_reply).
MAX_REVERSE_INPUT = 1024
_SLOTS = 1024  # two base32 characters
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SEPARATORS = "=-+"  # allowed right after the SRS0/SRS1 tag
_SEP = "="  # between fields, always
_DB_HOST = "1"  # postsrsd's pseudo-domain for database aliases
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class SrsReason(StrEnum):
    LOCAL_DOMAIN = "local-domain"
    NO_DOMAIN = "no-domain"
    NO_LOCAL_PART = "no-local-part"
    TOO_BIG = "too-big"
    NOT_SRS = "not-srs"
    NO_SRS0_HASH = "no-srs0-hash"
    NO_SRS0_STAMP = "no-srs0-timestamp"
    NO_SRS0_HOST = "no-srs0-host"
    NO_SRS0_USER = "no-srs0-user"
    NO_SRS1_HASH = "no-srs1-hash"
    NO_SRS1_HOST = "no-srs1-host"
    NO_SRS1_USER = "no-srs1-user"
    BAD_STAMP_CHAR = "bad-timestamp-char"
    STAMP_OUT_OF_DATE = "timestamp-out-of-date"
    HASH_TOO_SHORT = "hash-too-short"
    HASH_INVALID = "hash-invalid"
    NO_DATABASE = "no-database"
    UNKNOWN_ALIAS = "unknown-alias"
    DATABASE_ERROR = "database-error"


# postsrsd's texts and whether its socketmap answers PERM (an error) rather than NOTFOUND.
_MESSAGES: dict[SrsReason, tuple[str, bool]] = {
    SrsReason.LOCAL_DOMAIN: ("Need not rewrite local domain.", False),
    SrsReason.NO_DOMAIN: ("No domain.", False),
    SrsReason.NO_LOCAL_PART: ("No local part.", False),
    SrsReason.TOO_BIG: ("Too big.", True),
    SrsReason.NOT_SRS: ("Not an SRS address.", False),
    SrsReason.NO_SRS0_HASH: ("No hash in SRS0 address.", False),
    SrsReason.NO_SRS0_STAMP: ("No timestamp in SRS0 address.", False),
    SrsReason.NO_SRS0_HOST: ("No host in SRS0 address.", False),
    SrsReason.NO_SRS0_USER: ("No user in SRS0 address.", False),
    SrsReason.NO_SRS1_HASH: ("No hash in SRS1 address.", False),
    SrsReason.NO_SRS1_HOST: ("No host in SRS1 address.", False),
    SrsReason.NO_SRS1_USER: ("No user in SRS1 address.", False),
    SrsReason.BAD_STAMP_CHAR: ("Bad base32 character in timestamp.", False),
    SrsReason.STAMP_OUT_OF_DATE: ("Time stamp out of date.", False),
    SrsReason.HASH_TOO_SHORT: ("Hash too short in SRS address.", False),
    SrsReason.HASH_INVALID: ("Hash invalid in SRS address.", False),
    SrsReason.NO_DATABASE: ("No database for alias.", True),
    SrsReason.UNKNOWN_ALIAS: ("Unknown alias.", False),
    SrsReason.DATABASE_ERROR: ("Database error.", True),
}


@dataclass(frozen=True, slots=True)
class SrsResult:
    """Either `address` (rewritten) or `reason` (why not). `message`/`permanent` follow postsrsd."""

    address: str | None = None
    reason: SrsReason | None = None

    @property
    def ok(self) -> bool:
        return self.address is not None

    @property
    def message(self) -> str:
        return "" if self.reason is None else _MESSAGES[self.reason][0]

    @property
    def permanent(self) -> bool:
        return self.reason is not None and _MESSAGES[self.reason][1]


class AliasStore(Protocol):
    """Storage for database mode. Keys are upper-case aliases ending in "@1"."""

    def read(self, key: str) -> str | None: ...

    def write(self, key: str, value: str, ttl_seconds: int) -> None: ...


SecretsArg = SrsSecrets | Iterable[Secret | str | bytes]


def _fail(reason: SrsReason) -> SrsResult:
    return SrsResult(reason=reason)


def _secrets(secrets: SecretsArg) -> tuple[Secret, ...]:
    if isinstance(secrets, SrsSecrets):
        return secrets.secrets
    out = tuple(as_secret(s) for s in secrets)
    if not out:
        raise ValueError("at least one SRS secret is required")
    return out


def _hash(secret: Secret, fields: Iterable[str], length: int, urlsafe: bool) -> str:
    # Only ASCII letters are folded (as C tolower() in libsrs2); other bytes pass unchanged.
    data = "".join(f.translate(_ASCII_LOWER) for f in fields).encode("utf-8", "surrogateescape")
    digest = hmac.new(secret.reveal(), data, hashlib.sha1).digest()
    enc = base64.urlsafe_b64encode(digest) if urlsafe else base64.b64encode(digest)
    return enc.decode("ascii")[:length]


def _canonical_hash(value: str) -> bytes:
    # One comparison form for both alphabets and both cases.
    return value.translate(_ASCII_LOWER).replace("-", "+").replace("_", "/").encode("utf-8", "surrogateescape")


def _hash_ok(given: str, secrets: tuple[Secret, ...], fields: tuple[str, ...], length: int) -> SrsReason | None:
    if len(given) < length:
        return SrsReason.HASH_TOO_SHORT
    given_c = _canonical_hash(given[:length])
    ok = False
    for secret in secrets:  # all secrets, no early exit: timing says nothing about which matched
        ok |= hmac.compare_digest(given_c, _canonical_hash(_hash(secret, fields, length, False)))
    return None if ok else SrsReason.HASH_INVALID


def timestamp(today: int) -> str:
    """The two-character day stamp for `today` (days since the Unix epoch)."""
    slot = today % _SLOTS
    return _B32[slot >> 5] + _B32[slot & 31]


def _stamp_check(stamp: str, today: int, max_age: int) -> SrsReason | None:
    if len(stamp) != 2:
        return SrsReason.STAMP_OUT_OF_DATE
    then = 0
    for ch in stamp.upper():
        pos = _B32.find(ch)
        if pos < 0:
            return SrsReason.BAD_STAMP_CHAR
        then = (then << 5) | pos
    age = (today - then) % _SLOTS  # a stamp "from the future" wraps to a huge age
    return None if age <= max_age else SrsReason.STAMP_OUT_OF_DATE


def _srs_tag(local: str) -> str | None:
    """'SRS0' or 'SRS1' when `local` starts with an SRS tag and a valid separator."""
    if len(local) >= 5 and local[:3].upper() == "SRS" and local[3] in "01" and local[4] in _SEPARATORS:
        return "SRS" + local[3]
    return None


def is_srs(address: str) -> bool:
    return _srs_tag(address) is not None


def _is_local(domain: str, local_domains: Collection[str]) -> bool:
    d = domain.lower().rstrip(".")
    for entry in local_domains:
        e = entry.lower().rstrip(".")
        # A leading dot means "any subdomain of", as in postsrsd's domain lists.
        if e.startswith(".") and d.endswith(e):
            return True
        if d == e:
            return True
    return False


def database_alias(address: str) -> str:
    """postsrsd's database key for `address`: base32hex(SHA1(address)) + "@1"."""
    digest = hashlib.sha1(address.encode("utf-8", "surrogateescape")).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=") + "@" + _DB_HOST


def forward(
    address: str,
    alias_domain: str,
    secrets: SecretsArg,
    today: int,
    *,
    local_domains: Collection[str] = (),
    hash_length: int = HASH_LENGTH,
    max_age_days: int = MAX_AGE_DAYS,
    urlsafe: bool = True,
    store: AliasStore | None = None,
) -> SrsResult:
    """Rewrite a forwarded envelope sender into our `alias_domain`.

    Addresses in `alias_domain` or `local_domains` are not rewritten (reason LOCAL_DOMAIN).
    """
    if len(address) > MAX_INPUT:
        return _fail(SrsReason.TOO_BIG)
    local, at, domain = address.rpartition("@")
    if not at or not domain:
        return _fail(SrsReason.NO_DOMAIN)
    if _is_local(domain, (alias_domain, *local_domains)):
        return _fail(SrsReason.LOCAL_DOMAIN)
    if not local:
        return _fail(SrsReason.NO_LOCAL_PART)
    keys = _secrets(secrets)
    signing = keys[0]

    tag = _srs_tag(local)
    if store is not None and tag is None:
        alias = database_alias(address)
        try:
            store.write(alias, address, max_age_days * 86400)
        except Exception:  # any storage failure: do not rewrite, tell the caller it is an error
            return _fail(SrsReason.DATABASE_ERROR)
        local, _, domain = alias.rpartition("@")

    if tag == "SRS1":
        # Re-forwarding an SRS1 address: keep its first-hop host and opaque part, re-sign.
        parts = local[5:].split(_SEP, 2)
        if not parts[0]:
            return _fail(SrsReason.NO_SRS1_HASH)
        if len(parts) < 2 or not parts[1]:
            return _fail(SrsReason.NO_SRS1_HOST)
        if len(parts) < 3 or not parts[2]:
            return _fail(SrsReason.NO_SRS1_USER)
        host, opaque = parts[1], parts[2]
        h = _hash(signing, (host, opaque), hash_length, urlsafe)
        return SrsResult(f"SRS1={h}{_SEP}{host}{_SEP}{opaque}@{alias_domain}")
    if tag == "SRS0":
        # An SRS0 address from another forwarder: its domain is the first hop; the opaque
        # part keeps the separator that followed "SRS0".
        opaque = local[4:]
        h = _hash(signing, (domain, opaque), hash_length, urlsafe)
        return SrsResult(f"SRS1={h}{_SEP}{domain}{_SEP}{opaque}@{alias_domain}")
    stamp = timestamp(today)
    h = _hash(signing, (stamp, domain, local), hash_length, urlsafe)
    return SrsResult(f"SRS0={h}{_SEP}{stamp}{_SEP}{domain}{_SEP}{local}@{alias_domain}")


def reverse(
    address: str,
    secrets: SecretsArg,
    today: int,
    *,
    hash_length: int = HASH_LENGTH,
    max_age_days: int = MAX_AGE_DAYS,
    store: AliasStore | None = None,
) -> SrsResult:
    """Recover the original address from an SRS0/SRS1 address (as a bounce's recipient).

    The domain of `address` is ignored (as in libsrs2): the hash proves we made it.
    """
    if len(address) > MAX_REVERSE_INPUT:
        return _fail(SrsReason.TOO_BIG)
    tag = _srs_tag(address)
    if tag is None:
        return _fail(SrsReason.NOT_SRS)
    local = address.rpartition("@")[0] or address
    keys = _secrets(secrets)
    rest = local[5:]

    if tag == "SRS1":
        parts = rest.split(_SEP, 2)
        if not parts[0]:
            return _fail(SrsReason.NO_SRS1_HASH)
        if len(parts) < 2 or not parts[1]:
            return _fail(SrsReason.NO_SRS1_HOST)
        if len(parts) < 3 or not parts[2]:
            return _fail(SrsReason.NO_SRS1_USER)
        given, host, opaque = parts
        bad = _hash_ok(given, keys, (host, opaque), hash_length)
        if bad:
            return _fail(bad)
        return SrsResult(f"SRS0{opaque}@{host}")

    parts = rest.split(_SEP, 3)
    if not parts[0]:
        return _fail(SrsReason.NO_SRS0_HASH)
    if len(parts) < 2 or not parts[1]:
        return _fail(SrsReason.NO_SRS0_STAMP)
    if len(parts) < 3 or not parts[2]:
        return _fail(SrsReason.NO_SRS0_HOST)
    if len(parts) < 4 or not parts[3]:
        return _fail(SrsReason.NO_SRS0_USER)
    given, stamp, host, user = parts
    # postsrsd's order: the stamp first, then the hash.
    bad = _stamp_check(stamp, today, max_age_days) or _hash_ok(given, keys, (stamp, host, user), hash_length)
    if bad:
        return _fail(bad)
    if host == _DB_HOST:
        if store is None:
            return _fail(SrsReason.NO_DATABASE)
        try:
            original = store.read(f"{user}@{host}".upper())
        except Exception:
            return _fail(SrsReason.DATABASE_ERROR)
        return SrsResult(original) if original else _fail(SrsReason.UNKNOWN_ALIAS)
    return SrsResult(f"{user}@{host}")


def socketmap_reply(
    request: str,
    alias_domain: str,
    secrets: SecretsArg,
    today: int,
    *,
    local_domains: Collection[str] = (),
    store: AliasStore | None = None,
) -> str:
    """Answer one postsrsd socketmap query ("forward ADDR" / "reverse ADDR") the way postsrsd
    does: "OK <address>", "NOTFOUND <why>" or "PERM <why>". Pure: framing is the caller's job."""
    name, _, key = request.partition(" ")
    if name in ("forward", "reverse") and len(key) > MAX_INPUT:
        return "PERM Too big."
    if name == "forward":
        res = forward(key, alias_domain, secrets, today, local_domains=local_domains, store=store)
    elif name == "reverse":
        res = reverse(key, secrets, today, store=store)
    else:
        return "PERM Invalid map."
    if res.address is not None:
        return f"OK {res.address}"
    return f"{'PERM' if res.permanent else 'NOTFOUND'} {res.message}"
