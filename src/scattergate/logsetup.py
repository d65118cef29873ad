"""Where log lines go: stderr, a log file that logrotate can rotate, and syslog.

Log rotation: logrotate renames the file, then signals us (SIGUSR1, or SIGHUP); the handler
only notes the request, and the file handler reopens the file by name before its next line.
Reopening inside the signal handler could close the stream under a line being written.

Syslog: `logging.syslog` names a unix datagram socket (`/dev/log`, the local syslog daemon)
or a `HOST:PORT` that receives syslog over UDP (RFC 3164 framing, as logging.handlers writes it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import signal
import socket
import sys
import threading
import time
from pathlib import Path

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


class ReopeningFileHandler(logging.FileHandler):
    """A FileHandler that reopens its file by name after request_reopen() (log rotation)."""

    def __init__(self, filename: str | Path) -> None:
        # A client's bytes that are not UTF-8 are escaped, never the reason a line is lost.
        super().__init__(filename, encoding="utf-8", errors="backslashreplace")
        self._generation = _reopen_generation

    def emit(self, record: logging.LogRecord) -> None:
        if self._generation != _reopen_generation:
            self.acquire()
            try:
                self._generation = _reopen_generation
                if self.stream is not None:
                    self.stream.close()
                self.stream = self._open()
            finally:
                self.release()
        super().emit(record)


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
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
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
