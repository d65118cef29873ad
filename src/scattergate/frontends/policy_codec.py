"""Postfix policy delegation protocol (SMTPD_POLICY_README), sans IO.

A request is "name=value" lines ending in an empty line; the answer is one "action=..." line
and an empty line. The decoder is incremental and bounded: a peer that sends endless lines or
attributes is refused rather than buffered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from scattergate.model import Reply

MAX_LINE = 8192
MAX_ATTRIBUTES = 200


class PolicyProtocolError(ValueError):
    """Not a policy request: close the connection."""


class Decoder:
    """feed() bytes, get every complete request (a dict of attributes) back, in order."""

    def __init__(self) -> None:
        self._buffer = b""
        self._current: dict[str, str] = {}

    def feed(self, data: bytes) -> list[dict[str, str]]:
        buffer = self._buffer + data
        requests: list[dict[str, str]] = []
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._current:  # stray empty lines between requests are harmless
                    requests.append(self._current)
                    self._current = {}
                continue
            if len(line) > MAX_LINE:
                raise PolicyProtocolError("attribute line too long")
            name, eq, value = line.partition(b"=")
            if not eq or not name:
                raise PolicyProtocolError(f"not a name=value line: {line[:40]!r}")
            if len(self._current) >= MAX_ATTRIBUTES:
                raise PolicyProtocolError("too many attributes")
            # Postfix sends xtext-free UTF-8 (SMTPUTF8) or junk: keep the bytes round-trippable.
            self._current[name.decode("ascii", "replace")] = value.decode("utf-8", "surrogateescape")
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_LINE:
            raise PolicyProtocolError("attribute line too long")
        return requests


# -- answers -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Dunno:
    """No opinion: Postfix goes on with its other restrictions."""


@dataclass(frozen=True, slots=True)
class RejectAction:
    """A permanent refusal (a 5xx reply, sent as access(5)'s "5NN text" so the code is kept)."""

    reply: Reply

    def __post_init__(self) -> None:
        if self.reply.code // 100 != 5:
            raise ValueError(f"a reject needs a 5xx reply, not {self.reply.code}")


@dataclass(frozen=True, slots=True)
class DeferIfPermit:
    """A temporary refusal that a later definite reject still overrides (Postfix answers
    with access_map_defer_code, 450, and our enhanced status code and text)."""

    reply: Reply

    def __post_init__(self) -> None:
        if self.reply.code // 100 != 4:
            raise ValueError(f"a deferral needs a 4xx reply, not {self.reply.code}")


Action = Union[Dunno, RejectAction, DeferIfPermit]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def encode(action: Action) -> bytes:
    match action:
        case Dunno():
            line = "DUNNO"
        case RejectAction(reply):
            line = _one_line(str(reply))
        case DeferIfPermit(reply):
            line = _one_line(f"DEFER_IF_PERMIT {reply.status} {reply.text}" if reply.status
                             else f"DEFER_IF_PERMIT {reply.text}")
        case _:
            raise TypeError(f"not a policy action: {action!r}")
    return f"action={line}\n\n".encode("utf-8", "surrogateescape")


def encode_request(attributes: dict[str, str]) -> bytes:
    """The client's side (tests, tools): one request."""
    lines = "".join(f"{k}={v}\n" for k, v in attributes.items())
    return (lines + "\n").encode("utf-8", "surrogateescape")
