"""DKIM key pairs made the way an administrator makes them (openssl), and a dkimpy `dnsfunc`
that asks the loopback DNS server (tests/support/dns_server.py) for the public halves."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Callable

import dns.message
import dns.query

from tests.conftest import require_binary


def make_key(directory: Path, name: str, bits: int = 2048) -> tuple[Path, str]:
    """A private key file (mode 0600) and its public half as a DKIM key record's p= value."""
    openssl = require_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.private"
    subprocess.run([openssl, "genrsa", "-out", str(path), str(bits)], check=True, capture_output=True)
    path.chmod(0o600)
    der = subprocess.run([openssl, "rsa", "-in", str(path), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return path, base64.b64encode(der).decode()


def key_record(public: str) -> str:
    return f"v=DKIM1; k=rsa; p={public}"


def dns_txt(port: int) -> Callable[..., bytes]:
    """dkimpy's `dnsfunc`: TXT records from the loopback DNS server on `port`."""
    def lookup(name: bytes, timeout: float = 5, **_: object) -> bytes:
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=timeout)
        return b"".join(b"".join(rdata.strings) for rrset in answer.answer for rdata in rrset)
    return lookup
