"""Disk full: 452 inside the dialogue, nothing half-written, and service resumes with space.

The storage is a small tmpfs mounted by the test (root, as in CI); the gateway itself runs
unchanged on top of it.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from scattergate.delivery.spool import SPARE_DIR

from tests.conftest import IN_CI


@pytest.fixture
def small_disk() -> Iterator[Path]:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("the disk-full test mounts a tmpfs and needs root (CI runs as root)")
        pytest.skip("needs root to mount a tmpfs")
    mount = Path(tempfile.mkdtemp(prefix="sg-small-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def files_under(root: Path) -> list[Path]:
    """Files with something in them: the spool's stock of empty files (spool/spare/) holds nothing."""
    return [p for p in root.rglob("*") if p.is_file() and (p.stat().st_size or SPARE_DIR not in p.parts)]


def send(gw, size: int) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    with smtplib.SMTP(*gw.address) as client:
        client.ehlo("client.example")
        client.mail("a@sender.example")
        client.rcpt("postmaster@example.org")
        return client.data(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (size // 1000))


def test_maildir_disk_full_gets_452_and_leaves_nothing(gateway, make_config, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    gw = gateway(make_config(receive={"domains": ["example.org"]}, delivery={"maildir": str(small_disk)}))
    code, text = send(gw, 400_000)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert files_under(small_disk) == []  # no half-written message anywhere
    assert send(gw, 10_000)[0] == 250  # space is back: the next message is delivered
    assert len(files_under(small_disk)) == 1


def test_spool_disk_full_gets_452_and_leaves_nothing(gateway, make_config, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.support.sink import free_port

    config = make_config(
        receive={"domains": ["example.org"]},
        delivery={"relay": f"127.0.0.1:{free_port()}", "verify_recipients": False},
        spool={"enabled": True},
    )
    config.state.data_dir = str(small_disk)
    gw = gateway(config)
    spool_dir = small_disk / "spool"
    code, text = send(gw, 400_000)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert files_under(spool_dir) == []
    assert send(gw, 10_000)[0] == 250
    assert len(gw.gateway.spool) == 1
