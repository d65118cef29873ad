"""Real TLS for tests: a private CA and certificates made with the openssl CLI, and an
aiosmtpd downstream that offers STARTTLS with them."""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.sink import free_port


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # server certificate signed by the CA, for the names in `names`
    key: Path
    self_signed_cert: Path  # a certificate nobody vouches for (same key)
    other_key: Path  # a key that matches neither certificate
    names: tuple[str, ...]


def make_pki(openssl: str, directory: Path, names: tuple[str, ...] = ("mx.test.example", "downstream.test.example")) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=scattergate test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={names[0]}")
    san = ",".join(f"DNS:{n}" for n in names)
    (directory / "server.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    run("req", "-x509", "-key", "server.key", "-out", "selfsigned.pem", "-days", "2", "-subj", f"/CN={names[0]}",
        "-addext", f"subjectAltName={san}")
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key")
    for key in ("ca.key", "server.key", "other.key"):
        os.chmod(directory / key, 0o600)
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
               directory / "selfsigned.pem", directory / "other.key", names)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def client_context(ca: Path) -> ssl.SSLContext:
    """What a careful client uses: the test CA, certificate and host name checked."""
    return ssl.create_default_context(cafile=str(ca))


@dataclass
class _Recorder:
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append({
            "sender": envelope.mail_from,
            "recipients": list(envelope.rcpt_tos),
            "content": envelope.original_content or envelope.content,
            "tls": session.ssl is not None,
        })
        return "250 2.0.0 Ok: taken"


class TlsSink:
    """A downstream SMTP server on loopback (aiosmtpd in a thread), offering STARTTLS when
    given a context; `messages` records what arrived and whether it came over TLS."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.port = free_port()
        self._recorder = _Recorder()
        self._controller = Controller(self._recorder, hostname="127.0.0.1", port=self.port,
                                      server_hostname="downstream.test.example", tls_context=context)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self._recorder.messages

    def start(self) -> "TlsSink":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
