"""DKIM signatures (RFC 6376) on mail we send: our own DSNs, and optionally our users' mail.

A DSN to a sender whose domain publishes DMARC is only delivered if it passes DMARC itself;
MAILER-DAEMON@<our host name> passes when a key of our domain signs it. Keys are named as in
OpenDKIM's KeyTable, one line per key:

    NAME  DOMAIN:SELECTOR:/path/to/private.key

and a message is signed with the key of its From domain, or of the nearest parent domain that
has one (relaxed alignment), as OpenDKIM does with a SigningTable of `*@DOMAIN NAME` and
`*@.DOMAIN NAME` per key. A message whose From domain has no key goes unsigned.

A private key file readable by other users is refused (mode 0600 or 0400, as OpenDKIM
requires), naming the file: a signing key anyone on the host can read is no proof of anything.
Signing itself is pure (bytes in, bytes out) and done by dkimpy.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
import dkim.crypto

from scattergate.config import ConfigError
from scattergate.rewrite.keys import SecretFileError, read_private_file

log = logging.getLogger(__name__)

# Relaxed header and body canonicalisation: what OpenDKIM recommends for mail that may be
# re-folded or re-encoded on its way.
_CANONICALIZE = (b"relaxed", b"relaxed")


class KeyTableError(ConfigError):
    """The key table or a key in it cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    name: str
    domain: str
    selector: str
    path: Path
    private_key: bytes  # PEM


def _read_private_key(path: Path) -> bytes:
    try:
        key = read_private_file(path, "DKIM private key")
    except SecretFileError as exc:
        raise KeyTableError(str(exc)) from None
    try:
        dkim.crypto.parse_pem_private_key(key)
    except Exception as exc:  # dkimpy raises several kinds for a key it cannot parse
        raise KeyTableError(f"DKIM private key {path} is not a PEM RSA private key ({exc})") from None
    return key


def load_key_table(path: str | Path) -> dict[str, SigningKey]:
    """The keys of an OpenDKIM-style KeyTable, by domain (lower case). Raises KeyTableError."""
    table = Path(path)
    try:
        lines = table.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KeyTableError(f"{table}: cannot read the DKIM key table: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyTableError(f"{table}: not UTF-8 text") from None
    keys: dict[str, SigningKey] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = text.split(None, 1)
        parts = fields[1].strip().split(":", 2) if len(fields) == 2 else []
        if len(parts) != 3 or not all(parts):
            raise KeyTableError(f"{table}:{number}: expected 'NAME DOMAIN:SELECTOR:KEYFILE', got {text!r}")
        domain, selector, key_file = parts
        domain = domain.lower().rstrip(".")
        if domain in keys:
            raise KeyTableError(f"{table}:{number}: a second key for {domain}")
        key_path = Path(key_file)
        if not key_path.is_absolute():
            key_path = table.parent / key_path  # relative to the table, not to our working directory
        keys[domain] = SigningKey(fields[0], domain, selector, key_path, _read_private_key(key_path))
    return keys


def _from_domain(message: bytes) -> str:
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    values = parser.parsebytes(message).get_all("From") or []
    if len(values) != 1:
        return ""  # none, or several (RFC 5322 allows one): nothing to align with
    _, address = email.utils.parseaddr(str(values[0]))
    return address.rpartition("@")[2].lower().rstrip(".")


class DkimSigner:
    def __init__(self, keys: dict[str, SigningKey]) -> None:
        self.keys = keys

    @classmethod
    def from_key_table(cls, path: str | Path) -> "DkimSigner":
        return cls(load_key_table(path))

    def key_for(self, domain: str) -> SigningKey | None:
        """The key of `domain`, or of its nearest parent domain that has one."""
        labels = domain.lower().split(".")
        for start in range(len(labels) - 1):
            key = self.keys.get(".".join(labels[start:]))
            if key is not None:
                return key
        return None

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature field in front, when its From domain has a key;
        unchanged otherwise, or when signing fails (logged: an unsigned message still goes)."""
        domain = _from_domain(message)
        key = self.key_for(domain) if domain else None
        if key is None:
            return message
        try:
            signature = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.private_key,
                                  canonicalize=_CANONICALIZE)
        except dkim.DKIMException as exc:
            log.error("cannot DKIM-sign a message from %s with key %s: %s", domain, key.name, exc)
            return message
        return signature + message


def load_signer(key_table: str) -> DkimSigner | None:
    """The signer for `dkim_signing.key_table`; None when no table is configured."""
    if not key_table:
        return None
    signer = DkimSigner.from_key_table(os.path.expanduser(key_table))
    if not signer.keys:
        raise KeyTableError(f"{key_table}: no keys in the DKIM key table")
    return signer
