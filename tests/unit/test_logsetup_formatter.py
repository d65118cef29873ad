"""The shared log formatter: one line per record for every handler, time text cached per second."""

from __future__ import annotations

import io
import logging
import time

from scattergate.logsetup import TEXT_FORMAT, SharedFormatter


def _record(message: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("scattergate.decision", logging.INFO, __file__, 1, "%s", (message,), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def test_every_handler_writes_the_same_line() -> None:
    formatter = SharedFormatter(TEXT_FORMAT)
    streams = [io.StringIO(), io.StringIO()]
    logger = logging.Logger("scattergate.test")
    for stream in streams:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.info("decision %s", "verdict=accept")
    logger.info("decision %s", "verdict=reject")
    lines = streams[0].getvalue().splitlines()
    assert streams[1].getvalue() == streams[0].getvalue()
    assert [line.split("] ", 1)[1] for line in lines] == ["INFO decision verdict=accept", "INFO decision verdict=reject"]


def test_time_text_is_the_plain_formatters_within_and_across_seconds() -> None:
    shared, plain = SharedFormatter(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    start = 1_800_000_000.25
    for offset in (0.0, 0.5, 0.9, 1.0, 1.75, 3600.0):
        record = _record(f"at {offset}", start + offset)
        assert shared.format(record) == plain.format(_record(f"at {offset}", start + offset))


def test_a_new_record_with_the_same_text_is_formatted_anew() -> None:
    formatter = SharedFormatter(TEXT_FORMAT)
    first = formatter.format(_record("same", 1_800_000_000.1))
    second = formatter.format(_record("same", 1_800_000_002.2))
    assert first != second  # not taken from the cache: another record, another time
