"""Postfix's smtp-sink, a real SMTP server, as a test downstream."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SmtpSink:
    def __init__(self, binary: str, directory: Path, args: list[str]) -> None:
        self.binary = binary
        self.directory = directory
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # smtp-sink must drop privileges; as root it keeps root's so it can write into the
        # test's private temp dir (as 'nobody' it cannot, and drops every connection).
        user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        command = [self.binary, "-u", user, "-d", f"{self.directory}/%M%S.", *self.args,
                   f"127.0.0.1:{self.port}", "100"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait until it accepts connections (a readiness poll, not a timing assumption).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"smtp-sink exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
                time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def messages(self) -> list[bytes]:
        """Every message the sink received (each file: smtp-sink's X- headers, then the message)."""
        return [p.read_bytes() for p in sorted(self.directory.rglob("*")) if p.is_file()]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
