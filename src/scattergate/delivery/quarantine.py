"""The quarantine: messages held instead of delivered, or instead of bounced.

The content is written and fsynced under <data_dir>/quarantine/<id>.eml before the index
row is added, so an indexed message always has its file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from scattergate import durable
from scattergate.model import new_id
from scattergate.state.store import QuarantineItem, StateStore


class Quarantine:
    def __init__(self, root: Path, store: StateStore) -> None:
        self.root = root
        self.store = store
        root.mkdir(parents=True, exist_ok=True)

    def hold(self, content: bytes, sender: str, recipients: Sequence[str], reason: str) -> QuarantineItem:
        """Keep a message; blocking (run it in a thread from the event loop)."""
        item_id = new_id()
        path = self.root / f"{item_id}.eml"
        durable.write_new(path, content)
        durable.fsync_dir(self.root)
        item = QuarantineItem(item_id, time.time(), sender, tuple(recipients), reason, len(content), str(path))
        try:
            self.store.quarantine_add(item)
        except BaseException:
            path.unlink(missing_ok=True)  # not indexed, not acknowledged: the client retries
            raise
        return item

    def content(self, item: QuarantineItem) -> bytes:
        """The held message: the local file, or (held by another gateway sharing the state
        store) the copy the store keeps."""
        try:
            return Path(item.path).read_bytes()
        except FileNotFoundError:
            shared = getattr(self.store, "quarantine_content", None)
            data = shared(item.id) if shared is not None else None
            if data is None:
                raise
            return data

    def delete(self, item: QuarantineItem) -> None:
        self.store.quarantine_remove(item.id)
        Path(item.path).unlink(missing_ok=True)
