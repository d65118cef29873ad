"""ClamAV: clamd's INSTREAM command over a unix or TCP socket.

Protocol (clamd(8)): the command "zINSTREAM\\0" (the "z" asks for NUL-terminated replies),
then the message as chunks, each prefixed by its length as a 4-byte big-endian integer, then a
zero-length chunk. clamd answers "stream: OK", "stream: <signature> FOUND" or "<text> ERROR"
(e.g. "INSTREAM size limit exceeded. ERROR" past its StreamMaxLength), NUL-terminated.

Why our own client: the PyPI clients (`clamd`, `pyclamd`) have had no release in years and
use blocking sockets, which would stall the event loop and every other session for the
length of a scan; the protocol is three lines of framing.

Size cap: above `max_size` only the first `max_size` bytes are streamed (the finding says so).
A prefix still holds the headers and the first parts, where malware attachments usually sit;
skipping the message instead would let anyone pad a virus past the cap. Keep `max_size` at or
above `server.max_message_size` (both 25 MiB by default) and clamd's StreamMaxLength above it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Iterator, Sequence

from scattergate.checks import CheckContext
from scattergate.checks.scanners import ScanError, connect, format_detail, parse_address
from scattergate.model import Finding

if TYPE_CHECKING:
    from scattergate.config import ClamavConfig

COMMAND = b"zINSTREAM\0"
CHUNK = 64 * 1024  # well below clamd's default StreamMaxLength and socket buffers
_END = struct.pack(">I", 0)
_MAX_SIGNATURE = 200


def encode_instream(content: memoryview, chunk: int = CHUNK) -> Iterator[bytes | memoryview]:
    """The INSTREAM request as pieces to write in order: command, (length, slice)..., end.
    Slices of the memoryview: the message is never copied on our side."""
    yield COMMAND
    for start in range(0, len(content), chunk):
        piece = content[start:start + chunk]
        yield struct.pack(">I", len(piece))
        yield piece
    yield _END


def parse_reply(raw: bytes) -> str | None:
    """The signature name for an infected stream, None for a clean one; ScanError otherwise."""
    text = raw.rstrip(b"\0").decode("utf-8", "replace").strip()
    if text.endswith("ERROR"):
        raise ScanError(f"clamd error: {text[:-5].strip(' .:') or 'unspecified'}")
    if not text.startswith("stream: "):
        raise ScanError(f"unexpected clamd reply {text[:60]!r}")
    body = text[len("stream: "):]
    if body == "OK":
        return None
    if body.endswith(" FOUND"):
        signature = body[:-len(" FOUND")].strip()
        if signature and len(signature) <= _MAX_SIGNATURE and signature.isprintable() and " " not in signature:
            return signature
    raise ScanError(f"unexpected clamd reply {text[:60]!r}")


class ClamdScanner:
    def __init__(self, settings: "ClamavConfig") -> None:
        self.address = parse_address(settings.address, "scan.clamav.address")
        self.max_size = settings.max_size

    async def scan(self, ctx: CheckContext) -> Sequence[Finding]:
        content = memoryview(ctx.content or b"")
        size = len(content)
        scanned = content[: self.max_size]
        async with connect(self.address) as (reader, writer):
            try:
                for piece in encode_instream(scanned):
                    writer.write(piece)
                    if len(piece) > 4:  # drain per chunk, not per length prefix
                        await writer.drain()
            except (BrokenPipeError, ConnectionResetError):
                # clamd stops reading past StreamMaxLength but still says why: read it below.
                pass
            raw = await reader.readuntil(b"\0")
        signature = parse_reply(raw)
        if signature is not None:
            return [Finding("clamav", "virus", signature)]
        partial = {"scanned": str(len(scanned)), "size": str(size)} if len(scanned) < size else {}
        return [Finding("clamav", "clean", format_detail(partial))]
