"""DKIM (RFC 6376) verification, one finding per signature.

dkimpy does the cryptography; the key lookups go through our cached resolver. dkimpy is
blocking (and hashing a large body is CPU work), so it runs in a worker thread.

dkimpy reports most problems as a bare `False` (a DNS timeout, a missing key and a bad
signature alike). Our key lookup function records what happened, so each signature gets the
RFC 8601 result it deserves: pass, fail (did not verify), temperror (DNS), permerror (malformed
signature, missing/revoked/bad key, key too small).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util

from scattergate.model import Finding
from scattergate.net.dns import BlockingResolver, DnsNotFound, DnsTempError, Resolver

log = logging.getLogger(__name__)
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")

RESULTS = ("pass", "fail", "none", "temperror", "permerror")

# Limits against absurd input: generous for real mail, cheap to refuse beyond.
MAX_SIGNATURES = 8
MAX_HEADER_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 16 * 1024
MAX_KEY_RECORD_BYTES = 8 * 1024

_SIGNATURE_NAME = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str
    domain: str = ""  # d=
    selector: str = ""  # s=
    identity: str = ""  # i=
    reason: str = ""

    def finding(self) -> Finding:
        pairs = [f"d={self.domain}" if self.domain else "", f"s={self.selector}" if self.selector else ""]
        detail = " ".join(p for p in pairs if p)
        if self.reason and self.result != "pass":
            detail = f"{detail}; {self.reason}" if detail else self.reason
        return Finding("dkim", self.result, detail)


async def verify_dkim(resolver: Resolver, message: bytes, *, minkey: int = 1024,
                      max_signatures: int = MAX_SIGNATURES) -> list[DkimResult]:
    """Verify every DKIM-Signature (up to `max_signatures`). No signature: one `none` result."""
    head = _header_block(message)
    if not _SIGNATURE_NAME.search(head):
        return [DkimResult("none", reason="no signature")]
    if len(head) > MAX_HEADER_BYTES:
        return [DkimResult("permerror", reason=f"header block over {MAX_HEADER_BYTES} bytes")]
    try:
        return await resolver.run_blocking(
            lambda dns: _verify_all(dns, message, minkey, max_signatures))
    except Exception as exc:  # never let a library bug escape as an exception
        log.exception("DKIM verification failed")
        return [DkimResult("temperror", reason=f"internal error: {type(exc).__name__}")]


async def dkim_findings(resolver: Resolver, message: bytes, **kwargs: Any) -> list[Finding]:
    return [r.finding() for r in await verify_dkim(resolver, message, **kwargs)]


def _header_block(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            return message[:end + len(sep)]
    return message


def _verify_all(dns: BlockingResolver, message: bytes, minkey: int,
                max_signatures: int) -> list[DkimResult]:
    try:
        verifier = dkim.DKIM(message, logger=_dkimpy_log, minkey=minkey)
    except dkim.DKIMException as exc:
        return [DkimResult("permerror", reason=f"unparsable message: {_text(exc)}")]
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    if not signatures:
        return [DkimResult("none", reason="no signature")]
    results = [_verify_one(verifier, i, sig, dns) for i, sig in
               enumerate(signatures[:max_signatures])]
    if len(signatures) > max_signatures:
        log.info("verified only the first %d of %d DKIM signatures",
                 max_signatures, len(signatures))
    return results


class _KeyLookup:
    """dkimpy's `dnsfunc`, remembering what the lookup saw."""

    def __init__(self, dns: BlockingResolver) -> None:
        self.dns = dns
        self.temp_error = ""
        self.record: bytes | None = None
        self.looked_up = False

    def __call__(self, name: bytes, timeout: float = 5, **_: Any) -> bytes | None:
        self.looked_up = True
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        try:
            records = self.dns.txt_bytes(text)
        except DnsNotFound:
            return None
        except DnsTempError as exc:
            self.temp_error = str(exc)
            raise dkim.DnsTimeoutError(str(exc)) from exc
        if not records:
            return None
        # Several TXT records at a selector: prefer the one that looks like a key.
        keyish = [r for r in records if r.lstrip().startswith(b"v=DKIM1") or b"p=" in r]
        self.record = (keyish or records)[0]
        if len(self.record) > MAX_KEY_RECORD_BYTES:
            self.record = b""  # treated as an unusable key below
            return b""
        return self.record


def _verify_one(verifier: dkim.DKIM, idx: int, raw_sig: bytes,
                dns: BlockingResolver) -> DkimResult:
    tags = _tags(raw_sig)
    domain = _tag(tags, b"d")
    selector = _tag(tags, b"s")
    identity = _tag(tags, b"i")

    def result(res: str, reason: str = "") -> DkimResult:
        return DkimResult(res, domain, selector, identity, reason)

    if len(raw_sig) > MAX_SIGNATURE_BYTES:
        return result("permerror", f"signature header over {MAX_SIGNATURE_BYTES} bytes")
    if tags is None:
        return result("permerror", "malformed signature tag list")
    lookup = _KeyLookup(dns)
    try:
        ok = verifier.verify(idx, dnsfunc=lookup)
    except dkim.ValidationError as exc:
        text = _text(exc)
        if "body hash mismatch" in text:
            return result("fail", "body hash mismatch")
        return result("permerror", text)
    except dkim.KeyFormatError as exc:  # e.g. "public key too small"
        return result("permerror", _text(exc))
    except dkim.DKIMException as exc:  # MessageFormatError, ParameterError, unsupported key...
        return result("permerror", f"{type(exc).__name__}: {_text(exc)}")
    except Exception as exc:  # malformed base64 and the like deep inside dkimpy
        return result("permerror", f"unverifiable: {type(exc).__name__}")
    if ok:
        return result("pass")
    if lookup.temp_error:
        return result("temperror", f"key lookup: {lookup.temp_error}")
    if not lookup.looked_up:
        return result("permerror", "signature not verifiable")
    if lookup.record is None:
        return result("permerror", "no key for signature")
    if not lookup.record:
        return result("permerror", "unusable key record")
    try:
        dkim.evaluate_pk(b"key", lookup.record)
    except Exception as exc:  # revoked (empty p=), bad base64, bad key data, wrong k=
        return result("permerror", f"bad key: {_text(exc) or type(exc).__name__}")
    return result("fail", "signature did not verify")


def _tags(raw_sig: bytes) -> dict[bytes, bytes] | None:
    try:
        return dkim.util.parse_tag_value(raw_sig)  # type: ignore[no-any-return]
    except Exception:
        return None


def _tag(tags: dict[bytes, bytes] | None, name: bytes) -> str:
    if not tags or name not in tags:
        return ""
    value = re.sub(rb"\s+", b"", tags[name]).decode("utf-8", "replace")
    return value[:255]


def _text(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."
