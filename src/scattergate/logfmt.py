"""Log fields a client can write into, made safe: logfmt quoting and the session id on every line.

A HELO name, an address or a command is the client's text. Written raw into a `key=value` log
line it can forge fields (`EHLO x verdict=accept`) or carry terminal escapes to whoever reads
the log with `tail`. Every client-supplied value therefore goes through `quote()`, and every log
line about a connection goes through a `SessionLog`, so the session id is on each one, failure
lines included, and `grep session=...` follows a connection from start to end.
"""

from __future__ import annotations

import logging
from typing import Any, MutableMapping

# A bare value is one a logfmt reader splits back unchanged: no space, quote, '=' or backslash.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                  "!#$%&'()*+,-./:;<>?@[]^_`{|}~")
_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_surrogate(char: str) -> str:
    """A lone surrogate as text every encoder takes: a byte that was not UTF-8 (kept by
    surrogateescape) as `\\xNN`, any other surrogate as `\\uNNNN`; other characters unchanged.
    The log and the state store (`state/store.storable`) write such bytes the same way."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return escape_surrogate(char)
    if char.isprintable():
        return char
    # Control characters (ESC, C1 controls such as CSI 0x9b, DEL) never reach a terminal raw.
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with what could forge a field or reach a terminal escaped, without quotes."""
    # Fast path for the usual value (printable ASCII: no control character, no surrogate):
    # only the backslash and the quote need escaping. Every decision line quotes several
    # values, so the per-character path cost the milter ~0.05 ms per message.
    if text.isascii() and text.isprintable():
        return text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(_escape_char(char) for char in text)


def quote(value: object) -> str:
    """One logfmt value: bare when that is unambiguous, else double-quoted with escapes."""
    text = value if isinstance(value, str) else str(value)
    if text and _SAFE.issuperset(text):
        return text
    return '"' + escape(text) + '"'


def fields(**values: object) -> str:
    """`key=value` pairs, each value quoted; None is written as '-' (the log's 'absent')."""
    return " ".join(f"{key}={'-' if value is None else quote(value)}" for key, value in values.items())


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for one connection: every message starts with `session=<id>`."""

    def __init__(self, logger: logging.Logger, session_id: str) -> None:
        super().__init__(logger, {"session": session_id})
        self._prefix = f"session={quote(session_id)} "

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return self._prefix + str(msg), kwargs
