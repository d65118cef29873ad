"""Content scanners (clamd, spamd, rspamd) as remote checks of the DATA phase.

Each scanner module is a small protocol client whose `scan(ctx)` returns findings for a
well-formed answer and raises `ScanError` (or an OSError) for anything else. This module holds
what they share: socket addresses, streaming, the budget and failure policy around a scan, the
headers rendered from scanner findings (assembly.build_scanners() makes the checks).

Finding conventions (the policy table in decision/policy.py turns them into verdicts):
  clamav.clean | clamav.virus[signature]
  spamd.ham | spamd.tagged | spamd.spam      score = the scanner's score,
  rspamd.ham | rspamd.tagged | rspamd.spam | rspamd.deferred | rspamd.quarantine
                                             detail = "key=value ...; free text"
  <scanner>.oversize   the message is above max_size and was not sent to the scanner
  <scanner>.failed     down, erring, garbled or out of budget, with on_failure = "tempfail"
  <scanner>.skipped    the same with on_failure = "accept"
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Sequence

from scattergate.checks import CheckContext, RemoteCheck
from scattergate.config import ConfigError, ScanConfig, ScannerConfig, parse_host_port
from scattergate.model import Finding


SCANNERS = ("clamav", "spamd", "rspamd")
ON_FAILURE = ("tempfail", "accept")
SPAM_RESULTS = ("ham", "tagged", "spam", "quarantine")
# The runner's own budget is a backstop only: our timeout fires first and honours on_failure.
_BACKSTOP = 1.0
# Scanner replies are small; a peer that streams more is not a scanner we understand.
MAX_REPLY = 1024 * 1024


class ScanError(Exception):
    """The scanner answered, but not with a verdict (an error reply, or garbage)."""


@dataclass(frozen=True, slots=True)
class SocketAddress:
    path: str = ""  # a unix socket when set
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


def parse_address(text: str, key: str = "address") -> SocketAddress:
    """'unix:/run/clamav/clamd.ctl' or 'HOST:PORT' ('[::1]:783')."""

    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path.startswith("/"):
            raise ConfigError(f"{key}: a unix socket needs an absolute path, got {text!r}")
        return SocketAddress(path=path)
    host, port = parse_host_port(text, key)
    return SocketAddress(host=host, port=port)


@contextlib.asynccontextmanager
async def connect(address: SocketAddress) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    if address.path:
        reader, writer = await asyncio.open_unix_connection(address.path)
    else:
        reader, writer = await asyncio.open_connection(address.host, address.port)
    try:
        yield reader, writer
    except BaseException:
        # Abort, never close-and-wait: a hung peer that stopped reading would keep a graceful
        # close (which flushes our buffer first) waiting past the budget.
        writer.transport.abort()
        raise
    else:
        writer.close()


async def write_all(writer: asyncio.StreamWriter, data: memoryview, chunk: int = 64 * 1024) -> None:
    """Stream `data` in slices of a memoryview (no copies of the message on our side), waiting
    for the socket between slices so that at most one slice is buffered."""
    for start in range(0, len(data), chunk):
        writer.write(data[start:start + chunk])
        await writer.drain()


async def read_to_eof(reader: asyncio.StreamReader, limit: int = MAX_REPLY) -> bytes:
    data = await reader.read(limit + 1)
    buffer = bytearray(data)
    while data and len(buffer) <= limit:
        data = await reader.read(limit + 1 - len(buffer))
        buffer += data
    if len(buffer) > limit:
        raise ScanError(f"reply longer than {limit} bytes")
    return bytes(buffer)


def failure_reason(exc: BaseException) -> str:
    """A short, log-friendly reason; never the whole exception chain."""
    if isinstance(exc, ScanError):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed before a complete reply"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ENOENT:
        return "not running (connection refused)"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "connection reset"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


Scan = Callable[[CheckContext], Awaitable[Sequence[Finding]]]


def scanner_check(name: str, scan: Scan, settings: "ScannerConfig") -> RemoteCheck:
    """Wrap a scan with its budget and failure policy. A failure never propagates: it becomes
    `<name>.failed` (tempfail by default) or `<name>.skipped` (on_failure = "accept")."""
    failed = "failed" if settings.on_failure == "tempfail" else "skipped"

    async def run(ctx: CheckContext) -> Sequence[Finding]:
        try:
            async with asyncio.timeout(settings.budget):
                return await scan(ctx)
        except TimeoutError:
            reason = f"no answer within {settings.budget:g} s"
        except (ScanError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            reason = failure_reason(exc)
        return [Finding(name, failed, reason)]

    return RemoteCheck(name, run, settings.budget + _BACKSTOP)


def oversize(name: str, size: int, cap: int) -> Finding:
    return Finding(name, "oversize", f"{size} bytes, above max_size {cap}")


def validate_scan(config: ScanConfig, data_deadline: float) -> None:
    for name in SCANNERS:
        settings: ScannerConfig = getattr(config, name)
        key = f"scan.{name}"
        parse_address(settings.address, f"{key}.address")
        if settings.on_failure not in ON_FAILURE:
            raise ConfigError(f"{key}.on_failure: expected one of {', '.join(ON_FAILURE)}, got {settings.on_failure!r}")
        if settings.max_size <= 0:
            raise ConfigError(f"{key}.max_size must be positive, not {settings.max_size}")
        if settings.budget <= 0:
            raise ConfigError(f"{key}.budget must be positive, not {settings.budget}")
        if settings.enabled and settings.budget >= data_deadline:
            raise ConfigError(f"{key}.budget ({settings.budget:g} s) must stay below server.data_deadline"
                              f" ({data_deadline:g} s): the scan and the delivery share it")
    if config.spamd.tag_score > config.spamd.reject_score:
        raise ConfigError("scan.spamd.tag_score must not be above scan.spamd.reject_score")


# -- details and headers --------------------------------------------------------------------

def format_detail(pairs: dict[str, str], text: str = "") -> str:
    """'key=value ...; free text' — the detail convention shared with authresults."""
    head = " ".join(f"{k}={v}" for k, v in pairs.items() if v)
    return f"{head}; {text}" if text else head


def parse_detail(detail: str) -> dict[str, str]:
    head = detail.partition("; ")[0]
    return dict(token.partition("=")[::2] for token in head.split() if "=" in token)


def symbol_list(names: Sequence[str], limit: int = 40) -> str:
    """Comma-separated symbol names for the detail; capped so a log line stays readable."""
    clean = [n for n in names if n and all(c.isalnum() or c in "_-." for c in n)]
    text = ",".join(clean[:limit])
    return text + (",..." if len(clean) > limit else "") if text else "none"


def render_scan_headers(hostname: str, findings: Sequence[Finding]) -> list[tuple[str, str]]:
    """X-Spam-Flag / X-Spam-Status per spam scanner, X-Virus-Scanned, X-Scan-Skipped.

    Called for mail we deliver or quarantine only, so a failure finding here always means the
    message went on unscanned by that scanner.
    """
    headers: list[tuple[str, str]] = []
    flagged = False
    for finding in findings:
        if finding.check not in SCANNERS:
            continue
        if finding.result in SPAM_RESULTS:
            pairs = parse_detail(finding.detail)
            is_spam = finding.result != "ham"
            flagged |= is_spam
            status = f"{'Yes' if is_spam else 'No'}, score={finding.score:.1f}"
            if "required" in pairs:
                status += f" required={pairs['required']}"
            status += f" tests={pairs.get('tests', 'none')} scanner={finding.check}"
            headers.append(("X-Spam-Status", status))
        elif finding.check == "clamav" and finding.result == "clean":
            partial = parse_detail(finding.detail).get("scanned")
            headers.append(("X-Virus-Scanned", f"ClamAV on {hostname}" + (f" (first {partial} bytes)" if partial else "")))
        elif finding.result in ("skipped", "oversize", "failed", "timeout", "error"):
            headers.append(("X-Scan-Skipped", f"{finding.check} ({finding.detail or finding.result})"))
    if flagged:
        headers.insert(0, ("X-Spam-Flag", "YES"))
    return headers

