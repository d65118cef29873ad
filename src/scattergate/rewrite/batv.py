"""BATV (Bounce Address Tag Validation), "prvs" scheme, interoperable with Exim's ${prvs}.

Signed form (Exim, BATV draft order):  prvs=KDDDSSSSSS=local@domain
  K       key number, one digit (selects the secret: key rotation)
  DDD     expiry day = (days since epoch + 7) mod 1000, three digits
  SSSSSS  first 3 bytes of HMAC-SHA1(secret, K + DDD + address), lower-case hex,
          where `address` is the original address exactly as given (case preserved).

We also read a sub-address form, ``local+prvs=KDDDSSSSSS@domain`` (same HMAC over
``local@domain``), which some sites use so that the tag survives "+" aware routing.

Exim compatibility notes (see docs/batv-srs.md):
* The "prvs" prefix parses case-insensitively, but the hash compares exactly, so an upper-cased
  tag fails — as in Exim.
* Exim accepts any tag whose expiry day is not before today. We additionally bound how far in
  the future the expiry may lie (lifetime + clock skew), so a stolen signing clock can not mint
  tags valid for years. Every Exim-produced tag and every vector verifies the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from scattergate.rewrite.keys import BatvKeyring, Secret

LIFETIME_DAYS = 7  # Exim's fixed validity; the expiry day is stamped into the tag.
DEFAULT_CLOCK_SKEW_DAYS = 2
_DAY_MODULUS = 1000  # three decimal digits

# Exim's own syntax test is case-insensitive; the greedy local part keeps quoted '@'s.
_PREFIX_FORM = re.compile(r"prvs=([0-9])([0-9]{3})([0-9a-f]{6})=(.+)@([^@]+)", re.IGNORECASE | re.DOTALL)
_SUFFIX_FORM = re.compile(r"(.+)\+prvs=([0-9])([0-9]{3})([0-9a-f]{6})@([^@]+)", re.IGNORECASE | re.DOTALL)


class BatvStatus(StrEnum):
    VALID = "valid"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    UNKNOWN_KEY = "unknown_key"
    NOT_SIGNED = "not_signed"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A syntactically valid prvs address, split into its parts (nothing verified yet)."""

    key: str  # key digit
    day: str  # DDD, expiry day mod 1000
    signature: str  # SSSSSS as found (case preserved: it matters)
    address: str  # the original address, tag stripped
    form: Literal["prefix", "suffix"]


@dataclass(frozen=True, slots=True)
class BatvResult:
    status: BatvStatus
    address: str  # the stripped original address; the input itself when not signed
    key: str | None = None

    @property
    def valid(self) -> bool:
        return self.status is BatvStatus.VALID


def expiry_day(today: int, lifetime_days: int = LIFETIME_DAYS) -> str:
    """DDD for a tag signed on `today` (days since the Unix epoch, UTC)."""
    return f"{(today + lifetime_days) % _DAY_MODULUS:03d}"


def days_since_epoch(unix_time: float) -> int:
    return int(unix_time // 86400)


def _signature(secret: Secret, key: str, day: str, address: str) -> str:
    # Exim hashes the three strings concatenated, the address byte-for-byte as given.
    mac = hmac.new(secret.reveal(), f"{key}{day}{address}".encode("utf-8", "surrogateescape"), hashlib.sha1)
    return mac.hexdigest()[:6]


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an address with a domain: {address!r}")
    return local, domain


def sign(
    address: str,
    keyring: BatvKeyring,
    today: int,
    *,
    form: Literal["prefix", "suffix"] = "prefix",
    lifetime_days: int = LIFETIME_DAYS,
) -> str:
    """Tag `address` with the keyring's current key. Already-tagged addresses are re-tagged
    from their original, so signing is idempotent across relays."""
    existing = parse(address)
    if existing is not None:
        address = existing.address
    local, domain = _split(address)
    key = keyring.current
    day = expiry_day(today, lifetime_days)
    sig = _signature(keyring.signing_key, key, day, address)
    if form == "prefix":
        return f"prvs={key}{day}{sig}={address}"
    return f"{local}+prvs={key}{day}{sig}@{domain}"


def parse(address: str) -> Parsed | None:
    """Split a prvs address into its parts, or None when it is not prvs syntax."""
    m = _PREFIX_FORM.fullmatch(address)
    if m:
        key, day, sig, local, domain = m.groups()
        return Parsed(key, day, sig, f"{local}@{domain}", "prefix")
    m = _SUFFIX_FORM.fullmatch(address)
    if m:
        local, key, day, sig, domain = m.groups()
        return Parsed(key, day, sig, f"{local}@{domain}", "suffix")
    return None


def strip(address: str) -> str:
    """The original address without its BATV tag (unchanged when untagged). Unverified."""
    parsed = parse(address)
    return parsed.address if parsed else address


def verify(
    address: str,
    keyring: BatvKeyring,
    today: int,
    *,
    lifetime_days: int = LIFETIME_DAYS,
    clock_skew_days: int = DEFAULT_CLOCK_SKEW_DAYS,
) -> BatvResult:
    """Check a tagged address: signature first (constant-time), then the expiry day."""
    parsed = parse(address)
    if parsed is None:
        return BatvResult(BatvStatus.NOT_SIGNED, address)
    secret = keyring.get(parsed.key)
    if secret is None:
        return BatvResult(BatvStatus.UNKNOWN_KEY, parsed.address, parsed.key)
    expected = _signature(secret, parsed.key, parsed.day, parsed.address)
    if not hmac.compare_digest(expected.encode("ascii"), parsed.signature.encode("ascii")):
        return BatvResult(BatvStatus.BAD_SIGNATURE, parsed.address, parsed.key)
    # Days until expiry, modulo the 3-digit wrap: 0..lifetime normally, a little more when the
    # signer's clock ran ahead; anything else (e.g. 999 = expired yesterday) is expired.
    remaining = (int(parsed.day) - today) % _DAY_MODULUS
    if remaining > lifetime_days + clock_skew_days:
        return BatvResult(BatvStatus.EXPIRED, parsed.address, parsed.key)
    return BatvResult(BatvStatus.VALID, parsed.address, parsed.key)
