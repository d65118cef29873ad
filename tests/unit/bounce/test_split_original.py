"""split_original finds the inline copy of an original with one scan; it must find the same
line the plain per-line reading finds (the reference below), for any text."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from scattergate.bounce.classify.mime import _HEADER_LINE, _KEY_HEADERS, _header_run, split_original


def reference_start(body: str) -> int | None:
    lines = body.split("\n")
    for i in range(min(len(lines), 4000)):
        m = _HEADER_LINE.match(lines[i])
        if not m or m.group(1).lower() not in _KEY_HEADERS:
            continue
        block = _header_run(lines, i)
        if len({n for n in block if n in _KEY_HEADERS}) >= 2 and len(block) >= 3:
            return i
    return None


LINE = st.one_of(
    st.sampled_from(["From: a@example.net", "to: b@example.org", " > Subject: hi", "Message-ID: <x@y>",
                     "\tDate: today", "Received: by x", "X-Mailer: y", "Token: no", "ſubject: long s",
                     "     From: too deep", ">>>>From: quoted", "", "   ", "-- original message --",
                     "continued", " folded", "Return-Path: <>", "CC: c@d", "Content-Type: text/plain"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=40))
def test_finds_the_same_original_as_a_line_by_line_reading(lines: list[str]) -> None:
    body = "\n".join(lines)
    text, original = split_original(body)
    start = reference_start(body)
    assert (original is not None) == (start is not None)
    if start is None:
        assert text == body
    else:
        assert body.startswith(text) and text.count("\n") <= start


def test_a_copy_beyond_the_scanned_lines_is_not_looked_for() -> None:
    copy = "From: a@example.net\nTo: b@example.org\nSubject: hi\n"
    assert split_original("x\n" * 3999 + copy)[1] is not None
    assert split_original("x\n" * 4000 + copy)[1] is None
