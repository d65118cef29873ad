"""Local delivery into Maildirs (the embedded default).

The message is written once into tmp/, fsynced, then hard-linked into each recipient's new/
and the directories fsynced, all before we answer 250: a message we accepted survives a crash
or power loss. Layout: ROOT/<domain>/<local part>/{tmp,new,cur}.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path
from typing import Sequence

from scattergate import durable
from scattergate.address import Address

_sequence = count()


def mailbox_path(root: Path, recipient: Address) -> Path:
    # Path components come from the envelope: keep them from escaping the root.
    domain = _safe_component(recipient.domain.lower())
    local = _safe_component(recipient.unquoted_local.lower())
    return root / domain / local


def _safe_component(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_.+=" else "_" for c in text)
    return cleaned.lstrip(".") or "_"


def _unique_name() -> str:
    # Maildir convention: time.pid_sequence.host — unique without any locking.
    return f"{time.time_ns()}.P{os.getpid()}Q{next(_sequence)}.{socket.gethostname().replace('/', '_')}"


def _ensure_maildir(path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def deliver(root: Path, recipients: Sequence[Address], content: bytes) -> list[Path]:
    """Deliver `content` to every recipient; return the paths written. Blocking: run in a thread."""
    boxes = list(dict.fromkeys(mailbox_path(root, r) for r in recipients))
    for box in boxes:
        _ensure_maildir(box)
    name = _unique_name()
    staging = boxes[0] / "tmp" / name
    durable.write_new(staging, content)  # disk full: leaves nothing half-written behind
    delivered = []
    try:
        for box in boxes:
            target = box / "new" / name
            os.link(staging, target)
            durable.fsync_dir(box / "new")
            delivered.append(target)
    finally:
        os.unlink(staging)
    return delivered
