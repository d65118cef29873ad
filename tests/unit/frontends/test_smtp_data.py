"""The DATA reader: blocks of lines give what a line-at-a-time reader gives, whatever the chunking."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings, strategies as st

from scattergate.frontends.smtp_data import DataAccumulator, DataOutcome, read_data

LINE_LIMIT = 1001  # aiosmtpd's line_length_limit: 999 characters and the CRLF


def line_at_a_time(lines: list[bytes], size_limit: int) -> tuple[DataOutcome, bytes, int]:
    """The reference: RFC 5321 read one CRLF line at a time, the first broken limit wins.
    Returns the outcome, the unstuffed content and the octets read (the lone dot included)."""
    outcome, size, kept, consumed = DataOutcome.NOMINAL, 0, [], 0
    for line in lines:
        consumed += len(line)
        if line == b".\r\n":
            break
        if outcome is DataOutcome.NOMINAL and len(line) - 2 > LINE_LIMIT:
            outcome = DataOutcome.TOO_LONG
        size += len(line)
        if outcome is DataOutcome.NOMINAL and size_limit and size > size_limit:
            outcome = DataOutcome.TOO_MUCH
        if outcome is DataOutcome.NOMINAL and len(line) > LINE_LIMIT:
            outcome = DataOutcome.TOO_LONG
        kept.append(line[1:] if line.startswith(b".") else line)
    return outcome, b"".join(kept) if outcome is DataOutcome.NOMINAL else b"", consumed


async def read_from_chunks(chunks: list[bytes], size_limit: int) -> tuple[DataAccumulator, bytes]:
    """Feed the chunks to a real StreamReader (limit as aiosmtpd sets it) and read DATA from it;
    returns the accumulator and what was left unread in the reader."""
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    accumulator = DataAccumulator(size_limit, LINE_LIMIT)

    async def arrive() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(arrive())
    await asyncio.wait_for(read_data(reader, accumulator), 5)
    await feeder
    return accumulator, await reader.read()


def read(chunks: list[bytes], size_limit: int = 0) -> tuple[DataAccumulator, bytes]:
    return asyncio.run(read_from_chunks(chunks, size_limit))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def test_dots_are_unstuffed_and_the_data_ends_at_the_lone_dot():
    accumulator, rest = read([b"Subject: x\r\n\r\n..leading dot\r\n.\r\n...\r\n.\r\nQUIT\r\n"])
    assert accumulator.outcome is DataOutcome.NOMINAL
    # "..." is a line after the end: left for the command reader with the pipelined QUIT.
    assert accumulator.content() == b"Subject: x\r\n\r\n.leading dot\r\n"
    assert rest == b"...\r\n.\r\nQUIT\r\n"


def test_an_empty_message_is_the_lone_dot_at_once():
    accumulator, rest = read([b".\r\nRSET\r\n"])
    assert accumulator.outcome is DataOutcome.NOMINAL
    assert accumulator.content() == b""
    assert rest == b"RSET\r\n"


def test_a_dot_inside_a_line_or_a_dot_with_more_is_not_the_end():
    accumulator, _ = read([b"a.\r\n", b".x\r\n", b" .\r\n", b".\r", b"\n"])
    assert accumulator.content() == b"a.\r\nx\r\n .\r\n"


def test_a_line_of_999_characters_passes_and_one_of_1000_is_too_long():
    accumulator, _ = read([b"x" * 999 + b"\r\n.\r\n"])
    assert accumulator.outcome is DataOutcome.NOMINAL
    accumulator, rest = read([b"x" * 1000 + b"\r\nafter\r\n.\r\nQUIT\r\n"])
    assert accumulator.outcome is DataOutcome.TOO_LONG
    assert rest == b"QUIT\r\n"


def test_a_line_far_over_the_readers_limit_arriving_slowly_is_drained_then_the_end_found():
    chunks = [b"start\r\n"] + [b"y" * 700] * 10 + [b"\r\n", b"..\r\n.\r\nNOOP\r\n"]
    accumulator, rest = read(chunks)
    assert accumulator.outcome is DataOutcome.TOO_LONG
    assert accumulator.size == len(b"".join(chunks)) - len(b".\r\nNOOP\r\n")
    assert rest == b"NOOP\r\n"


def test_the_lone_dot_after_the_tail_of_an_overlong_line_ends_the_data():
    accumulator, rest = read([b"z" * 3000, b"\r\n.\r\n", b"QUIT\r\n"])
    assert accumulator.outcome is DataOutcome.TOO_LONG and accumulator.done
    assert rest == b"QUIT\r\n"


def test_too_much_data_is_counted_on_the_wire_and_dropped():
    accumulator, _ = read([b"0123456789\r\n" * 10 + b".\r\n"], size_limit=119)
    assert accumulator.outcome is DataOutcome.TOO_MUCH
    assert accumulator.content() == b""
    accumulator, _ = read([b"0123456789\r\n" * 10 + b".\r\n"], size_limit=120)
    assert accumulator.outcome is DataOutcome.NOMINAL


def test_the_first_limit_broken_is_the_outcome():
    long_line = b"x" * 1000 + b"\r\n"
    accumulator, _ = read([b"a" * 50 + b"\r\n" + long_line + b".\r\n"], size_limit=40)
    assert accumulator.outcome is DataOutcome.TOO_MUCH
    accumulator, _ = read([b"a\r\n" + long_line + b"b" * 3000 + b"\r\n.\r\n"], size_limit=1500)
    assert accumulator.outcome is DataOutcome.TOO_LONG
    # A line the reader's limit cannot hold is too long before it is counted, as in aiosmtpd.
    accumulator, _ = read([b"a\r\n" + b"x" * 1500 + b"\r\n.\r\n"], size_limit=1000)
    assert accumulator.outcome is DataOutcome.TOO_LONG


def test_a_dot_ending_an_overlong_line_is_not_taken_for_the_end():
    # The reader keeps the last octet of an overrun line back: here the dot, then its CRLF.
    accumulator, rest = read([b"z" * 3000 + b".", b"\r\nafter\r\n.\r\nQUIT\r\n"])
    assert accumulator.outcome is DataOutcome.TOO_LONG
    assert rest == b"QUIT\r\n"


def test_after_an_overlong_line_a_buffer_starting_with_a_dot_line_is_not_the_end():
    accumulator = DataAccumulator(0, LINE_LIMIT)
    accumulator.overlong(b"z" * 1500)  # its CRLF not read yet: the buffer is mid-line
    assert accumulator.end_of_data(b".\r\nnext\r\n") == len(b".\r\nnext\r\n")
    accumulator.feed(b".\r\nnext\r\n")
    assert not accumulator.done and accumulator.outcome is DataOutcome.TOO_LONG


lines = st.lists(
    st.one_of(
        st.sampled_from([b"", b".", b"..", b". ", b"x.", b"\r", b"\n", b"\r.", b"x" * 999, b"x" * 1000, b"y" * 2100]),
        st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"")),  # no CRLF inside a line
    ).map(lambda b: b + b"\r\n"),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(lines=lines, cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12),
       size_limit=st.sampled_from([0, 50, 400, 3000]), after=st.sampled_from([b"", b"QUIT\r\n", b".\r\nMAIL FROM:<>\r\n"]))
def test_any_chunking_reads_what_a_line_at_a_time_reader_reads(lines, cuts, size_limit, after):
    wire = b"".join(lines) + b".\r\n" + after
    accumulator, rest = read(split_at(wire, cuts), size_limit)
    # A generated "." line ends the data early, as it would on the wire.
    expected_outcome, expected_content, consumed = line_at_a_time([*lines, b".\r\n"], size_limit)
    assert accumulator.outcome is expected_outcome
    if expected_outcome is DataOutcome.NOMINAL:
        assert accumulator.content() == expected_content
    assert rest == wire[consumed:]
