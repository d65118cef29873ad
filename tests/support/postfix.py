"""A private, real Postfix instance on loopback (its own config and queue, no chroot).

Used by the benchmark (Postfix as a plain relay) and by system tests. Nothing of the
machine's own Postfix is touched: everything lives under one directory given by the caller.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

# master.cf: only the services a relay needs, none chrooted (ENVIRONMENT.md).
_MASTER = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PrivatePostfix:
    def __init__(self, directory: Path, *, port: int, settings: dict[str, str]) -> None:
        self.directory = directory
        self.port = port
        self.config_dir = directory / "etc"
        self.settings = settings

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as 'postfix': every directory above the queue must let it pass.
        for parent in [self.directory, *self.directory.parents]:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(f"{parent} is not searchable by the postfix user (chmod o+x)")
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.directory / "queue"),
            "data_directory": str(self.directory / "data"),
            "maillog_file": str(self.directory / "maillog"),
            "maillog_file_prefixes": str(self.directory),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix.test.example",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_transport": "error",
            "relay_transport": "relay",
            "biff": "no",
            "smtputf8_enable": "yes",
        }
        base.update(self.settings)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in base.items()))
        (self.config_dir / "master.cf").write_text(_MASTER.format(listen=f"127.0.0.1:{self.port}"))
        for name in ("dynamicmaps.cf", "postfix-files"):
            source = Path("/etc/postfix") / name
            if source.exists():
                shutil.copy(source, self.config_dir / name)
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory / "data", "postfix")
        # Postfix creates the queue's subdirectories itself, but not the queue directory.
        (self.directory / "queue").mkdir(exist_ok=True)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        self.write_config()
        result = self.postfix("start")
        if result.returncode != 0:
            # Before postlogd runs, the postfix command reports errors only to a terminal:
            # ask again under script(1) to have the reason in the exception.
            again = subprocess.run(
                ["script", "-qc", f"postfix -c {self.config_dir} start", "/dev/null"],
                capture_output=True, text=True, timeout=60,
            )
            raise RuntimeError(f"postfix start failed: {again.stdout.strip()}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"postfix did not start listening: {self.log()}")

    def log(self) -> str:
        path = self.directory / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.postfix("stop")
