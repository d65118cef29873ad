"""Recipient validation at RCPT: unknown local recipients are refused, never accepted.

Accepting mail for a user who does not exist is the root of most backscatter: the bounce for
it goes to whoever the spammer forged. The table is one address per line ("user@domain"), or a
bare local part valid at every local domain; '#' starts a comment. The file is re-read when it
changes, so an administrator never has to restart the gateway.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterable

from scattergate.checks import CheckContext
from scattergate.model import Finding

log = logging.getLogger(__name__)

# RFC 5321 §4.5.1 and RFC 2142: these must exist at every domain we receive for.
DEFAULT_LOCAL_PARTS = ("postmaster", "abuse")
_RESTAT_INTERVAL = 2.0


class RecipientTable:
    def __init__(
        self,
        path: str | None,
        *,
        default_local_parts: Iterable[str] = DEFAULT_LOCAL_PARTS,
        delimiter: str = "+",
    ) -> None:
        self._path = Path(path) if path else None
        self._delimiter = delimiter
        self._addresses: frozenset[str] = frozenset()
        self._local_parts: frozenset[str] = frozenset(p.lower() for p in default_local_parts)
        self._mtime: float | None = None
        self._checked = 0.0
        if self._path is not None:
            self._load()

    @property
    def domains(self) -> set[str]:
        return {address.rpartition("@")[2] for address in self._addresses}

    def _load(self) -> None:
        assert self._path is not None
        stat = self._path.stat()  # a missing file at start-up is a configuration error
        addresses: set[str] = set()
        local_parts: set[str] = set()
        with open(self._path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                entry = line.split("#", 1)[0].strip().lower()
                if not entry:
                    continue
                if entry.startswith("<") and entry.endswith(">"):
                    entry = entry[1:-1]
                (addresses if "@" in entry else local_parts).add(entry)
        self._addresses = frozenset(addresses)
        self._local_parts = frozenset(local_parts)
        self._mtime = stat.st_mtime
        log.info("loaded %d recipients from %s", len(addresses) + len(local_parts), self._path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < _RESTAT_INTERVAL:
            return
        self._checked = now
        try:
            if os.stat(self._path).st_mtime != self._mtime:
                self._load()
        except OSError as exc:  # keep serving the last good table
            log.warning("cannot re-read recipients file %s: %s", self._path, exc)

    def __contains__(self, address: str) -> bool:
        self._maybe_reload()
        local, _, domain = address.lower().rpartition("@")
        candidates = [local]
        if self._delimiter and self._delimiter in local:
            candidates.append(local.split(self._delimiter, 1)[0])
        return any(
            f"{c}@{domain}" in self._addresses or c in self._local_parts for c in candidates
        )


class RecipientCheck:
    def __init__(self, table: RecipientTable, is_local: Callable[[str], bool]) -> None:
        self._table = table
        self._is_local = is_local

    def __call__(self, ctx: CheckContext) -> list[Finding]:
        rcpt = ctx.recipient
        assert rcpt is not None
        if not self._is_local(rcpt.domain):
            return []
        if rcpt.normalized in self._table:
            return []
        return [Finding("recipient", "unknown", rcpt.normalized)]
