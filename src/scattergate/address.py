"""RFC 5321 envelope addresses: a strict, pure parser.

We parse the path ourselves (instead of the stdlib e-mail header parser) because the relay
checks must *see* the classic relay tricks — source routes, quoted local parts holding '@',
percent hacks, bang paths, IP literals — rather than have them silently normalised away.
"""

from __future__ import annotations

import functools

import ipaddress
import re
from dataclasses import dataclass

# RFC 5321 §4.1.2 atext, widened by RFC 6531 to any non-ASCII character (SMTPUTF8).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010FFFF]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010FFFF]|\\[\x20-\x7e])*"')
_SUB_DOMAIN = r"[A-Za-z0-9\u0080-\U0010FFFF](?:[A-Za-z0-9\-\u0080-\U0010FFFF]*[A-Za-z0-9\u0080-\U0010FFFF])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*")
_ADDRESS_LITERAL = re.compile(r"\[[^\[\]\\\s]+\]")

# RFC 5321 §4.5.3.1: local part 64 octets, domain 255 octets, path 256 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


class AddressError(ValueError):
    """The path is not a valid RFC 5321 reverse-path or forward-path."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed envelope address. `local` keeps its quotes when it was a quoted string."""

    local: str
    domain: str
    route: tuple[str, ...] = ()

    @classmethod
    def null(cls) -> "Address":
        return _NULL

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_quoted(self) -> bool:
        return self.local.startswith('"')

    @property
    def unquoted_local(self) -> str:
        if not self.is_quoted:
            return self.local
        return re.sub(r"\\(.)", r"\1", self.local[1:-1])

    @property
    def is_ip_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def has_routing(self) -> bool:
        """Sender-specified routing: the percent hack, bang paths, '@' in a quoted local part,
        or an explicit source route. Any of these can make a downstream MTA relay onwards."""
        local = self.unquoted_local
        return bool(self.route) or "%" in local or "!" in local or "@" in local

    @property
    def normalized(self) -> str:
        """Lower-cased address without source route: the key for lookups and caches."""
        if self.is_null:
            return ""
        return f"{self.local.lower()}@{self.domain.lower()}"

    def __str__(self) -> str:
        if self.is_null:
            return ""
        return f"{self.local}@{self.domain}"

    def bracketed(self) -> str:
        return f"<{self}>"


_NULL = Address("", "")


def parse_path(text: str, *, allow_null: bool = False) -> Address:
    """Parse an SMTP path such as ``<user@example.org>`` or ``<@a,@b:user@c>``.

    Angle brackets are required by RFC 5321 but many clients omit them; a bare mailbox is
    accepted as the same path. ``<>`` is the null reverse-path, valid only where `allow_null`.
    """
    # Every message parses a sender and recipients, mostly the same few again: the (immutable)
    # result is remembered. A path that does not parse raises every time (nothing is cached).
    return _parse_path_cached(text, allow_null)


@functools.lru_cache(maxsize=4096)
def _parse_path_cached(text: str, allow_null: bool) -> Address:
    return _parse_path(text, allow_null)


def _parse_path(text: str, allow_null: bool) -> Address:
    text = text.strip()
    if text.startswith("<"):
        if not text.endswith(">"):
            raise AddressError("unbalanced angle brackets")
        inner = text[1:-1]
    else:
        inner = text
    if len(inner) > MAX_PATH:
        raise AddressError("path too long")
    if inner == "":
        if allow_null and text == "<>":
            return _NULL
        raise AddressError("empty address")
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        route_text, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
        hops = tuple(hop[1:] for hop in route_text.split(","))
        if not all(route_text.split(",")) or not all(
            h.startswith("@") and _DOMAIN.fullmatch(h[1:]) for h in route_text.split(",")
        ):
            raise AddressError("malformed source route")
        route = hops
    return _parse_mailbox(inner, route)


def _parse_mailbox(text: str, route: tuple[str, ...]) -> Address:
    if text.startswith('"'):
        match = _QUOTED_STRING.match(text)
        if match is None:
            raise AddressError("malformed quoted local part")
        local = match.group(0)
        rest = text[match.end():]
    else:
        local, at, domain = text.rpartition("@")
        if not at:
            raise AddressError("address has no domain")
        if not _DOT_STRING.fullmatch(local):
            raise AddressError("malformed local part")
        rest = "@" + domain
    if not rest.startswith("@"):
        raise AddressError("address has no domain")
    domain = rest[1:]
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if len(domain.encode("utf-8", "surrogateescape")) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        if not _ADDRESS_LITERAL.fullmatch(domain) or not _valid_literal(domain[1:-1]):
            raise AddressError("malformed address literal")
    elif not _DOMAIN.fullmatch(domain):
        raise AddressError("malformed domain")
    return Address(local, domain, route)


def _valid_literal(body: str) -> bool:
    if body.lower().startswith("ipv6:"):
        try:
            ipaddress.IPv6Address(body[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(body)
    except ValueError:
        # RFC 5321 General-address-literal: tag ":" content; we accept its syntax only.
        tag, colon, content = body.partition(":")
        return bool(colon and tag and content and re.fullmatch(r"[A-Za-z0-9-]+", tag))
    return True
