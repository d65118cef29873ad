"""Reading the DATA phase (RFC 5321 §4.1.1.4, §4.5.2) in blocks of lines, not a line at a time.

aiosmtpd reads DATA with one `readuntil(CRLF)` per line: for a 5 KB message about seventy
awaits and their bookkeeping, a tenth of the CPU a relayed message costs. Here every complete
line already received is taken in one read and checked with bytes operations. What is
accepted and refused is unchanged:
- the data ends at the first line that is exactly "." (the final CRLF.CRLF);
- a line longer than `line_limit` octets with its CRLF makes the message TOO_LONG;
- more than `size_limit` octets on the wire (CRLFs and stuffed dots counted) makes it TOO_MUCH;
- the first of the two to happen is the outcome; from then on the data is read and dropped;
- a leading dot is removed from every line (dot-unstuffing).

`DataAccumulator` is the I/O-free part; `read_data` feeds it from the connection's reader.
"""

from __future__ import annotations

import asyncio
import enum

_TERMINATOR = b"\r\n.\r\n"
_LONE_DOT = b".\r\n"


class DataOutcome(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the line limit
    TOO_MUCH = "too_much"  # more than the size limit


class DataAccumulator:
    """The lines of one DATA phase, fed as blocks of whole CRLF-terminated lines."""

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit or 0  # 0: no limit
        self.line_limit = line_limit
        self.outcome = DataOutcome.NOMINAL
        self.size = 0
        self.done = False  # the final dot has been seen
        self.mid_line = False  # the next block continues an overlong line (not a line start)
        self._blocks: list[bytes] = []

    def end_of_data(self, buffered: bytes | bytearray) -> int:
        """How many octets of `buffered` to take next: up to and including the final dot if it
        is there, else every complete line; 0 when not even one line is complete."""
        if not self.mid_line and buffered.startswith(_LONE_DOT):
            return len(_LONE_DOT)
        found = buffered.find(_TERMINATOR)
        if found >= 0:
            return found + len(_TERMINATOR)
        return buffered.rfind(b"\r\n") + 2 if b"\r\n" in buffered else 0

    def feed(self, block: bytes) -> None:
        """A block as cut by `end_of_data`: whole lines, possibly ending with the final dot."""
        if self.mid_line:  # the rest of an overlong line: counted, never kept
            cut = block.find(b"\r\n")
            if cut < 0:
                self.overlong(block)
                return
            self.overlong(block[: cut + 2])  # ends in CRLF: no longer mid-line
            block = block[cut + 2:]
        if block.endswith(_LONE_DOT) and (len(block) == 3 or block.endswith(_TERMINATOR)):
            self.done = True
            block = block[:-3]
        if not block:
            return
        size = self.size + len(block)
        if self.outcome is DataOutcome.NOMINAL:
            longest = max(map(len, block.split(b"\r\n"))) + 2
            if longest > self.line_limit or (self.size_limit and size > self.size_limit):
                self._first_refusal(block)
            else:
                self._blocks.append(block)
        self.size = size

    def overlong(self, fragment: bytes) -> None:
        """Part of a line longer than the reader's limit (its CRLF too, when it is the end)."""
        if self.outcome is DataOutcome.NOMINAL:
            self.outcome = DataOutcome.TOO_LONG
            self._blocks.clear()
        self.size += len(fragment)
        self.mid_line = not fragment.endswith(b"\r\n")

    def _first_refusal(self, block: bytes) -> None:
        """Line by line, which limit the block breaks first; the data is dropped from here on."""
        size = self.size
        for line in block.split(b"\r\n")[:-1]:
            if len(line) > self.line_limit:  # aiosmtpd's reader overran on this one: too long first
                self.outcome = DataOutcome.TOO_LONG
                break
            size += len(line) + 2
            if self.size_limit and size > self.size_limit:
                self.outcome = DataOutcome.TOO_MUCH
                break
            if len(line) + 2 > self.line_limit:
                self.outcome = DataOutcome.TOO_LONG
                break
        self._blocks.clear()

    def content(self) -> bytes:
        """The message, dot-unstuffed (only meaningful when the outcome is NOMINAL)."""
        data = b"".join(self._blocks)
        self._blocks.clear()
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", b"\r\n")


def _buffered(reader: asyncio.StreamReader) -> bytearray:
    # StreamReader has no public peek; its buffer has been `_buffer` (a bytearray) in every
    # CPython release since asyncio began. Only read here, never changed.
    return reader._buffer  # type: ignore[attr-defined]


async def read_data(reader: asyncio.StreamReader, accumulator: DataAccumulator) -> None:
    """Read up to and including the final dot into `accumulator`.

    Every complete line already buffered is taken in one `readexactly` (which does not wait);
    only when none is buffered does it wait, for one line, with `readuntil`, which also
    enforces the reader's line limit as aiosmtpd's own DATA loop does."""
    while not accumulator.done:
        take = accumulator.end_of_data(_buffered(reader))
        if take:
            accumulator.feed(await reader.readexactly(take))
            continue
        try:
            accumulator.feed(await reader.readuntil(b"\r\n"))
        except asyncio.LimitOverrunError as overrun:
            # No CRLF within the reader's limit: drain what is there and keep reading.
            accumulator.overlong(await reader.read(overrun.consumed))
