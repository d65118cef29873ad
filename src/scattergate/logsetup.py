"""Where log lines go: stderr, a log file that logrotate can rotate, and syslog.

Log rotation: logrotate renames the file, then signals us (SIGUSR1, or SIGHUP); the handler
only notes the request, and the file handler reopens the file by name before its next line.
Reopening inside the signal handler could close the stream under a line being written.

Writes: lines logged on the event loop are written together at the end of the loop's current
turn, one write per destination, rather than a write and a flush each (every message logs a
decision line, and in store-and-forward mode a delivery line, to stderr and to the file: four
system calls a message, a twentieth of a worker's time). A line is never held longer than that
turn; lines logged outside the loop (threads, start-up, shut-down) are written at once.

Syslog: `logging.syslog` names a unix datagram socket (`/dev/log`, the local syslog daemon)
or a `HOST:PORT` that receives syslog over UDP (RFC 3164 framing, as logging.handlers writes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import TextIO

from scattergate.config import Config, ConfigError, parse_host_port
from scattergate.state.store import storable_decision

# SIGUSR1 reopens the log file everywhere; SIGHUP too, unless a service gives it another job
# (serve re-reads its configuration on SIGHUP, and reopens the log file as part of that).
REOPEN_SIGNALS = (signal.SIGUSR1, signal.SIGHUP)
TEXT_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
# syslog stamps time and host itself; the tag "scattergate[pid]:" lets it file the line.
SYSLOG_FORMAT = "scattergate[%(process)d]: %(levelname)s %(name)s %(message)s"

_reopen_generation = 0  # bumped by the signal handler; each file handler catches up


def request_reopen(_signum: int = 0, _frame: object = None) -> None:
    """Signal-safe: ask every log file to be reopened before its next line."""
    global _reopen_generation
    _reopen_generation += 1


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler whose lines, when logged on a running event loop, are written at the end
    of the loop's turn, all together (see the module docstring)."""

    def __init__(self, stream: object = None) -> None:
        super().__init__(stream)  # type: ignore[arg-type]
        self._pending: list[str] = []
        _buffered.add(self)

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop: now
            self._write_pending()
            return
        if len(self._pending) == 1:
            loop.call_soon(self.flush)
        elif len(self._pending) >= 256:  # a burst: bound what a crash could take with it
            self._write_pending()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if not lines or self.stream is None:
            return
        try:
            self.stream.write("".join(lines))
            if hasattr(self.stream, "flush"):
                self.stream.flush()
        except Exception:
            self.handleError(logging.makeLogRecord({"msg": "%d log line(s) could not be written", "args": (len(lines),)}))


def flush_buffered() -> None:
    """Write what the handlers hold (before a fork, and before a worker's os._exit)."""
    for handler in list(_buffered):
        handler.flush()


_buffered: "weakref.WeakSet[TurnBufferedHandler]" = weakref.WeakSet()
os.register_at_fork(before=flush_buffered)  # a child must not write its parent's lines again


class ReopeningFileHandler(TurnBufferedHandler):
    """Appends to a log file; reopens it by name after request_reopen() (log rotation)."""

    def __init__(self, filename: str | Path) -> None:
        self.path = os.path.abspath(filename)
        super().__init__(self._open())
        self._generation = _reopen_generation

    def _open(self) -> TextIO:
        # A client's bytes that are not UTF-8 are escaped, never the reason a line is lost.
        return open(self.path, "a", encoding="utf-8", errors="backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        if self._generation != _reopen_generation:
            self._generation = _reopen_generation
            self._write_pending()  # what was logged before the rotation goes to the old file
            old, self.stream = self.stream, self._open()
            old.close()
        super().emit(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._write_pending()
            self.stream.close()
        finally:
            self.release()
        super().close()


class SharedFormatter(logging.Formatter):
    """A formatter the handlers share (stderr, the log file): a line is formatted once for
    all of them, and the time stamp's text once a second. Every message writes a decision
    line, and formatting it per handler cost as much as building it."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        # The last record and its line. Holding the record keeps its id from being reused.
        self._last: tuple[logging.LogRecord | None, str] = (None, "")
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        last, text = self._last  # one tuple: consistent even if another thread formats
        if last is record:
            return text
        text = self.render(record)
        self._last = (record, text)
        return text

    def render(self, record: logging.LogRecord) -> str:
        return super().format(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime(self.default_time_format, self.converter(record.created)))
        return self.default_msec_format % (self._second[1], record.msecs)


class JsonFormatter(SharedFormatter):
    """One JSON object per line; a decision line carries the decision's fields."""

    def render(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        decision = getattr(record, "decision", None)
        if decision is not None:
            # The fields as the state store keeps them: bytes that were not UTF-8 as \xNN.
            entry["decision"] = dataclasses.asdict(storable_decision(decision))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ASCII only: client text then can carry no terminal escape (C1 controls included) and
        # no lone surrogate, which would make the line unwritable, and so lost.
        return json.dumps(entry, ensure_ascii=True)


def syslog_address(text: str) -> str | tuple[str, int]:
    """`/dev/log` or `unix:/dev/log` → a socket path; `HOST:PORT` → a UDP address."""
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/"):
        return text
    return parse_host_port(text, "logging.syslog")


def validate(config: Config) -> None:
    """The [logging] settings that config_check.validate() cannot check by type alone. Like
    check-config's other checks, it opens what it names: a syslog socket must be listening."""
    if config.logging.syslog:
        address = syslog_address(config.logging.syslog)
        if isinstance(address, str):
            try:
                _probe_unix_socket(address)  # SysLogHandler would ignore it and fail on every line
            except OSError as exc:
                raise ConfigError(f"logging.syslog: cannot connect to {config.logging.syslog}: "
                                  f"{exc.strerror or exc}") from None
    if config.logging.syslog_facility not in logging.handlers.SysLogHandler.facility_names:
        raise ConfigError(f"logging.syslog_facility: unknown facility {config.logging.syslog_facility!r} "
                          "(mail, daemon, local0 ... local7, ...)")


def _probe_unix_socket(path: str) -> None:
    """Raise OSError unless a syslog daemon listens at `path` (datagram, or stream as rsyslog may)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return
            except OSError as exc:
                error = exc
    raise error


def _syslog_handler(config: Config) -> logging.Handler:
    address = syslog_address(config.logging.syslog)
    facility = logging.handlers.SysLogHandler.facility_names[config.logging.syslog_facility]
    try:
        handler = logging.handlers.SysLogHandler(address=address, facility=facility, socktype=socket.SOCK_DGRAM
                                                 if not isinstance(address, str) else None)
    except OSError as exc:
        raise ConfigError(f"logging.syslog: cannot connect to {config.logging.syslog}: {exc.strerror or exc}") from None
    handler.setFormatter(SharedFormatter(SYSLOG_FORMAT))
    return handler


def setup_logging(config: Config) -> None:
    """Send log lines to stderr, the log file (inside data_dir) and syslog, as configured."""
    handlers: list[logging.Handler] = [TurnBufferedHandler(sys.stderr)]
    if config.logging.file:
        path = config.data_dir / config.logging.file  # relative to data_dir, or absolute
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(ReopeningFileHandler(path))
    syslog = _syslog_handler(config) if config.logging.syslog else None
    formatter = JsonFormatter() if config.logging.format == "json" else SharedFormatter(TEXT_FORMAT)
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=config.logging.level.upper(), handlers=handlers, force=True)
    if syslog is not None:
        if config.logging.format == "json":
            syslog.setFormatter(JsonFormatter())
            syslog.ident = "scattergate: "
        logging.getLogger().addHandler(syslog)
    # aiosmtpd logs every command at INFO; our decision line says what matters.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread():  # signals are the main thread's
        for signum in REOPEN_SIGNALS:
            # Installed before any worker forks, so a rotation signal never meets the default
            # action (terminate) in a process that has not set up its own handlers yet.
            signal.signal(signum, request_reopen)
