"""Who may use the HTTP listener: the token, the session cookie, CSRF tokens, Host checks.

On loopback without a token, anyone on this host may look (like the CLI, which needs only read
access to the data directory); the Host header must then name loopback too, so that a web page
elsewhere cannot reach the dashboard through DNS rebinding. Off loopback a token is required
(config validation refuses to start without one): as `Authorization: Bearer <token>` (scrapers,
scripts) or through the login form, which sets a cookie derived from the token — the token
itself is never stored in the browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import stat
from dataclasses import dataclass

from scattergate.config import ConfigError
from scattergate.web.http import Request

COOKIE = "scattergate_session"
MIN_TOKEN = 16


def read_token(path: str) -> str:
    """The token from a file that only its owner can read (mode 0600 or stricter)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"http.token_file: cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"http.token_file: {path} must not be readable by others (chmod 600)")
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ConfigError(f"http.token_file: the token must be one word of at least {MIN_TOKEN} characters")
    return token


def loopback_host(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Guard:
    token: str  # "" on loopback without a token
    secret: bytes  # signs CSRF tokens; shared by the worker processes (made before fork)

    @property
    def required(self) -> bool:
        return bool(self.token)

    def session_value(self) -> str:
        return hmac.new(self.token.encode(), b"scattergate dashboard session", hashlib.sha256).hexdigest()

    def host_allowed(self, request: Request) -> bool:
        # With a token the token protects; without one, only loopback names are answered.
        return self.required or loopback_host(request.headers.get("host", ""))

    def authenticated(self, request: Request) -> bool:
        if not self.required:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies().get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session_value().encode())

    def token_matches(self, given: str) -> bool:
        return self.required and hmac.compare_digest(given.encode(), self.token.encode())

    def csrf_token(self, request: Request) -> str:
        # Bound to the session cookie (if any): a token seen by one login is no use to another.
        bound = request.cookies().get(COOKIE, "")
        return hmac.new(self.secret, f"csrf:{bound}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, given: str) -> bool:
        origin = request.headers.get("origin", "")
        # A browser names the page that posted in Origin: it must be us (same Host).
        if origin and origin != "null" and origin.split("://", 1)[-1].rstrip("/") != request.headers.get("host", ""):
            return False
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf_token(request).encode())
