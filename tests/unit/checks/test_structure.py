"""checks/structure.py: header section size, MIME nesting depth, NUL — exact where it matters."""

from __future__ import annotations

import time

from scattergate.checks import CheckContext
from scattergate.checks.structure import MessageStructure, header_section_size, mime_depth
from scattergate.model import Session


def nested(depth: int, *, close: bool = True) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(depth))) if close else b""
    return b"Subject: x\r\nMIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhi" + closing + b"\r\n"


def siblings(count: int) -> bytes:
    """`count` multipart parts side by side in one multipart/mixed: deep 2, many boundaries."""
    parts = b"".join(
        b'--top\r\nContent-Type: multipart/alternative; BOUNDARY=s%d\r\n\r\n--s%d\r\n\r\nx\r\n--s%d--\r\n' % (i, i, i)
        for i in range(count)
    )
    return b'Content-Type: multipart/mixed; boundary="top"\r\n\r\n' + parts + b"--top--\r\n"


def test_header_section_size() -> None:
    assert header_section_size(b"A: b\r\n\r\nbody", 6) is None  # "A: b\r\n" is 6 bytes
    assert header_section_size(b"A: bc\r\n\r\nbody", 6) == 7
    assert header_section_size(b"\r\nonly a body" + b"x" * 100, 6) is None
    assert header_section_size(b"A: b\r\n", 6) is None  # no body, fits
    assert header_section_size(b"A: bcdefg\r\n", 6) == 11  # no body: all of it is header


def test_mime_depth_exact_past_the_fast_path() -> None:
    assert mime_depth(nested(3), 100) <= 100
    assert mime_depth(nested(150), 100) > 100
    assert mime_depth(nested(150), 200) == 150
    assert mime_depth(nested(150, close=False), 200) == 150
    # Many boundaries side by side are not deep (and a parameter name in capitals counts).
    assert mime_depth(siblings(300), 10) == 2


def test_mime_depth_is_bounded_in_time() -> None:
    hostile = nested(50_000) + b"\r\n--x" * 200_000
    started = time.monotonic()
    assert mime_depth(hostile, 100) > 100
    assert time.monotonic() - started < 5  # linear: well under a second here


def test_findings() -> None:
    check = MessageStructure(max_header_size=100, max_mime_depth=5)
    ctx = CheckContext(Session(client_ip="192.0.2.1", client_port=1), content=b"X: " + b"y" * 200 + b"\r\n\r\na\x00b")
    assert [f.key for f in check(ctx)] == ["message.header_too_large", "message.nul"]
    ctx.content = nested(6)
    assert [f.key for f in check(ctx)] == ["message.mime_too_deep"]
    ctx.content = nested(5)
    assert check(ctx) == []
