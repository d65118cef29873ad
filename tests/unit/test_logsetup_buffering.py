"""Log lines logged on the event loop are written together at the end of the loop's turn."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path

from scattergate.logsetup import ReopeningFileHandler, TurnBufferedHandler, request_reopen


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.Logger("scattergate.buffering-test")
    logger.addHandler(handler)
    return logger


def test_lines_of_one_loop_turn_are_written_once_at_its_end() -> None:
    stream = CountingStream()
    logger = _logger(TurnBufferedHandler(stream))

    async def scenario() -> tuple[str, str, int]:
        logger.info("one")
        logger.info("two")
        during = stream.getvalue()
        await asyncio.sleep(0)  # the turn ends
        await asyncio.sleep(0)
        return during, stream.getvalue(), stream.writes

    during, after, writes = asyncio.run(scenario())
    assert during == "" and after == "one\ntwo\n" and writes == 1


def test_lines_logged_off_the_loop_are_written_at_once() -> None:
    stream = CountingStream()
    logger = _logger(TurnBufferedHandler(stream))
    logger.info("start-up")
    assert stream.getvalue() == "start-up\n"

    async def in_a_thread() -> str:
        await asyncio.to_thread(logger.info, "from a thread")
        return stream.getvalue()

    assert asyncio.run(in_a_thread()).endswith("from a thread\n")


def test_a_burst_is_written_before_the_turn_ends() -> None:
    stream = CountingStream()
    logger = _logger(TurnBufferedHandler(stream))

    async def scenario() -> int:
        for n in range(300):
            logger.info("line %d", n)
        return stream.getvalue().count("\n")

    assert asyncio.run(scenario()) >= 256  # bounded: a crash cannot take a whole burst with it


def test_a_forked_child_does_not_write_its_parents_lines_again(tmp_path: Path) -> None:
    path = tmp_path / "fork.log"
    handler = ReopeningFileHandler(path)
    logger = _logger(handler)

    async def scenario() -> None:
        logger.info("parent's line")  # held until the turn ends ...
        pid = os.fork()  # ... or until a fork
        if pid == 0:
            logger.info("child's line")
            handler.flush()
            os._exit(0)
        os.waitpid(pid, 0)

    asyncio.run(scenario())
    handler.close()
    assert sorted(path.read_text().splitlines()) == ["child's line", "parent's line"]


def test_rotation_sends_earlier_lines_to_the_old_file_and_later_ones_to_the_new(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    handler = ReopeningFileHandler(path)
    logger = _logger(handler)

    async def scenario() -> None:
        logger.info("before")
        path.rename(tmp_path / "gateway.log.1")  # logrotate renames, then signals
        request_reopen()
        logger.info("after")
        await asyncio.sleep(0)

    asyncio.run(scenario())
    handler.close()
    assert (tmp_path / "gateway.log.1").read_text() == "before\n"
    assert path.read_text() == "after\n"
