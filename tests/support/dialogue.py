"""A raw SMTP client for transcript tests: send exact bytes, read whole replies."""

from __future__ import annotations

import socket


class Dialogue:
    def __init__(self, address: tuple[str, int], *, timeout: float = 30) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply: (code, text of its lines joined by newlines)."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(l[4:] for l in lines)

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def command(self, line: str | bytes) -> tuple[int, str]:
        raw = line.encode() if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True once the server has closed the connection."""
        return self.file.readline() == b""

    def close(self) -> None:
        # The makefile() reader holds the descriptor open too: close both.
        for closable in (self.file, self.sock):
            try:
                closable.close()
            except OSError:
                pass

    def __enter__(self) -> "Dialogue":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
