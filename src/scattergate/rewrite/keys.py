"""Secrets for BATV and SRS: typed holders that never print their contents, and file loaders.

File formats (both UTF-8, one entry per line; lines that are empty or start with '#' are skipped;
only the line ending is stripped, so a secret may contain spaces — as in postsrsd's secrets file):

* SRS secrets file: one secret per line. The first secret signs; all of them verify.
  This is the same layout as postsrsd's ``secrets-file``, so the two can share one file.
* BATV keys file: ``K:secret`` per line, K a single digit 0-9 (the prvs key number).
  The first line is the current signing key; the others only verify (rotation: add the new key
  on top, keep the old one for at least 8 days, then remove it). Duplicate digits are an error.

A secrets file must not be accessible to group or other (mode & 0o077 == 0): a readable secret
lets anyone forge bounce-accepting BATV tags or turn our SRS domain into an open forwarder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from scattergate import durable
from scattergate.config import Config


class SecretFileError(ValueError):
    """A secrets file is unsafe (permissions), unreadable as text, or malformed."""


class Secret:
    """An opaque secret. repr/str never reveal it, so it cannot leak into logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if not raw:
            raise ValueError("empty secret")
        self._value = raw

    def reveal(self) -> bytes:
        """The secret bytes, for the HMAC key. Call only where the key is consumed."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Refuse pickling: a pickled secret ends up in caches, queues and crash dumps.
        raise TypeError("Secret objects cannot be pickled")


def as_secret(value: Secret | str | bytes) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


@dataclass(frozen=True, slots=True, repr=False)
class BatvKeyring:
    """BATV (prvs) keys indexed by their key digit; `current` is the digit used for signing."""

    keys: Mapping[str, Secret]
    current: str

    def __post_init__(self) -> None:
        for digit in self.keys:
            if len(digit) != 1 or digit not in "0123456789":
                raise ValueError(f"BATV key number must be one digit 0-9, got {digit!r}")
        if self.current not in self.keys:
            raise ValueError(f"current BATV key {self.current!r} is not in the keyring")

    @classmethod
    def from_mapping(cls, keys: Mapping[str, Secret | str | bytes], current: str) -> BatvKeyring:
        return cls({k: as_secret(v) for k, v in keys.items()}, current)

    def get(self, digit: str) -> Secret | None:
        return self.keys.get(digit)

    @property
    def signing_key(self) -> Secret:
        return self.keys[self.current]

    def __repr__(self) -> str:
        return f"BatvKeyring(digits={sorted(self.keys)!r}, current={self.current!r})"


@dataclass(frozen=True, slots=True, repr=False)
class SrsSecrets:
    """SRS secrets: the first signs, all verify (rotation without breaking bounces in flight)."""

    secrets: tuple[Secret, ...]

    def __post_init__(self) -> None:
        if not self.secrets:
            raise ValueError("at least one SRS secret is required")

    @classmethod
    def of(cls, values: Iterable[Secret | str | bytes]) -> SrsSecrets:
        return cls(tuple(as_secret(v) for v in values))

    @property
    def signing(self) -> Secret:
        return self.secrets[0]

    def __iter__(self) -> Iterator[Secret]:
        return iter(self.secrets)

    def __len__(self) -> int:
        return len(self.secrets)

    def __repr__(self) -> str:
        return f"SrsSecrets(<{len(self.secrets)} redacted>)"


def read_private_file(path: str | os.PathLike[str], what: str = "secrets file") -> bytes:
    """The content of a file after checking that it is private (`what` names it in errors).

    The mode is checked on the open descriptor (fstat), not the path, so the file we check is
    the file we read.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError as exc:
        raise SecretFileError(f"cannot open {what} {name}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {name} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SecretFileError(
                f"{what} {name} has mode {mode:04o}; it must not be accessible to "
                f"group or other (chmod 600 {name})"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def read_secret_file(path: str | os.PathLike[str]) -> list[str]:
    """Read the meaningful lines of a secrets file after checking that it is private."""
    name = os.fspath(path)
    data = read_private_file(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"secrets file {name} is not valid UTF-8") from exc
    lines = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        lines.append(line)
    return lines


def load_srs_secrets(path: str | os.PathLike[str]) -> SrsSecrets:
    lines = read_secret_file(path)
    if not lines:
        raise SecretFileError(f"secrets file {os.fspath(path)} holds no secret")
    return SrsSecrets.of(lines)


def load_batv_keyring(path: str | os.PathLike[str]) -> BatvKeyring:
    name = os.fspath(path)
    keys: dict[str, Secret] = {}
    current: str | None = None
    for lineno, line in enumerate(read_secret_file(path), start=1):
        digit, sep, secret = line.partition(":")
        # Error messages name the line, never its content: it holds a secret.
        if not sep or len(digit) != 1 or digit not in "0123456789":
            raise SecretFileError(f"{name}: entry {lineno} is not 'K:secret' with K a digit 0-9")
        if not secret:
            raise SecretFileError(f"{name}: entry {lineno} has an empty secret")
        if digit in keys:
            raise SecretFileError(f"{name}: key number {digit} appears twice")
        keys[digit] = Secret(secret)
        if current is None:
            current = digit
    if current is None:
        raise SecretFileError(f"BATV keys file {name} holds no key")
    return BatvKeyring(keys, current)


def load_or_create_site_secret(path: str | os.PathLike[str]) -> Secret:
    """The site's own HMAC secret (BATV when no keys file is given, and the token header).

    Created on first start with mode 0600 (32 random bytes, hex); several gateways of one site
    must share this file, or each will refuse the others' bounces.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        import secrets as _random

        # Written whole under a private name, then linked into place: several workers
        # starting at once all end up with the same, complete secret (the link fails for all
        # but the first, and nobody can read a half-written file).
        temporary = f"{name}.{os.getpid()}.tmp"
        Path(temporary).unlink(missing_ok=True)  # left by a crash of a process with our pid
        durable.write_new(temporary, (_random.token_hex(32) + "\n").encode(), mode=0o600)
        try:
            os.link(temporary, name)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    lines = read_secret_file(name)
    if not lines:
        raise SecretFileError(f"secrets file {name} holds no secret")
    return Secret(lines[0])


def load_batv_keys(site_secret: Secret, keys_file: str) -> BatvKeyring:
    """The BATV keyring: the keys file when one is configured, else one key from the site secret."""
    if keys_file:
        return load_batv_keyring(keys_file)
    return BatvKeyring.from_mapping({"0": site_secret}, current="0")


def load_site_keys(config: Config) -> tuple[Secret, BatvKeyring]:
    """The site secret (made on first use) and the BATV keyring, as every service loads them:
    the gateway, the milter, the policy service and the socketmap must sign and verify alike."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    site_secret = load_or_create_site_secret(config.site_secret_file)
    return site_secret, load_batv_keys(site_secret, config.backscatter.batv_keys_file)
