"""Who may use the HTTP listener: the token, login sessions, CSRF tokens, Host checks.

On loopback without a token, anyone on this host may *look* (like the CLI, which needs only
read access to the data directory); the Host header must then name loopback too, so that a web
page elsewhere cannot reach the dashboard through DNS rebinding. Changes (release, delete)
always need the token: without one configured the dashboard is read-only, because "anyone on
this host" includes every local user, and letting out quarantined mail is not theirs to do.
Off loopback a token is required to look, too (config validation refuses to start without
one): as `Authorization: Bearer <token>` (scrapers, scripts) or through the login form.

A login makes a new random session id, kept server-side (`Sessions`) and in an `HttpOnly`
cookie; logging out deletes it, so a copied cookie stops working at logout, and a cookie that
was set before the login (session fixation) never becomes a valid one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from scattergate.config import ConfigError
from scattergate.web.http import Request

COOKIE = "scattergate_session"
MIN_TOKEN = 16
SESSION_LIFETIME = 12 * 3600  # seconds of inactivity after which a login must be repeated


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


class Sessions:
    """Login sessions, one file each under a 0700 directory, so that every worker process
    (and a restart) sees the same logins. A file is named by the SHA-256 of the session id —
    the id itself is never on disk — and holds a fingerprint of the token it was made with:
    a new token ends the sessions of the old one."""

    def __init__(self, directory: Path, token: str, lifetime: float = SESSION_LIFETIME) -> None:
        self.directory = directory
        self.lifetime = lifetime
        self._fingerprint = hmac.new(token.encode(), b"scattergate session store", hashlib.sha256).hexdigest()

    def create(self) -> str:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._prune()
        session = secrets.token_urlsafe(32)
        fd = os.open(self._path(session), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self._fingerprint)
        return session

    def valid(self, session: str) -> bool:
        if not session:
            return False
        path = self._path(session)
        try:
            age = time.time() - path.stat().st_mtime
            fingerprint = path.read_text()
        except OSError:
            return False
        if age > self.lifetime or not hmac.compare_digest(fingerprint, self._fingerprint):
            path.unlink(missing_ok=True)
            return False
        if age > 60:  # sliding expiry; touched at most once a minute, not on every request
            os.utime(path)
        return True

    def end(self, session: str) -> None:
        if session:
            self._path(session).unlink(missing_ok=True)

    def _path(self, session: str) -> Path:
        return self.directory / hashlib.sha256(session.encode()).hexdigest()

    def _prune(self) -> None:
        cutoff = time.time() - self.lifetime
        for entry in os.scandir(self.directory):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass


@dataclass(frozen=True, slots=True)
class Guard:
    token: str  # "" on loopback without a token: read-only
    secret: bytes  # signs CSRF tokens; shared by the worker processes (made before fork)
    sessions: Sessions | None = None  # None without a token (nobody logs in)

    @property
    def required(self) -> bool:
        return bool(self.token)

    @property
    def writable(self) -> bool:
        """Changes (release, delete) are offered only with a token to prove who asks."""
        return self.required

    def host_allowed(self, request: Request) -> bool:
        # With a token the token protects; without one, only loopback names are answered.
        return self.required or loopback_host(request.headers.get("host", ""))

    def bearer(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return self.required and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self.token.encode())

    def authenticated(self, request: Request) -> bool:
        if not self.required:
            return True
        return self.bearer(request) or self.logged_in(request)

    def logged_in(self, request: Request) -> bool:
        return self.sessions is not None and self.sessions.valid(request.cookies().get(COOKIE, ""))

    def token_matches(self, given: str) -> bool:
        return self.required and hmac.compare_digest(given.encode(), self.token.encode())

    def login(self, request: Request) -> str:
        """A new session (the one the browser had, if any, ends): its Set-Cookie value."""
        assert self.sessions is not None
        self.sessions.end(request.cookies().get(COOKIE, ""))
        return f"{COOKIE}={self.sessions.create()}; Path=/; HttpOnly; SameSite=Strict"

    def logout(self, request: Request) -> str:
        if self.sessions is not None:
            self.sessions.end(request.cookies().get(COOKIE, ""))
        return f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"

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
