"""Pins: a ``pin.json`` marker next to a backup's manifest keeps the backup from retention.

The manifest is never rewritten (it is the commit marker, and its checksums are what
verification trusts), so a pin is a small object of its own, removed by deleting it (or
hiding it, where a bucket's default retention refuses the delete). Only the marker's presence matters to retention; its fields say who
pinned and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from opskit.catalog.layout import PIN_NAME, format_time, pin_key, split_backup_key
from opskit.catalog.manifest import Manifest
from opskit.catalog.objects import write_json
from opskit.storage.base import Storage, delete_or_hide


@dataclass(frozen=True)
class Pin:
    """The pin of one backup: when it was pinned, and an optional note saying why."""

    target: str
    backup_id: str
    pinned_at: datetime
    note: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """Return the JSON-ready form stored in ``pin.json``."""
        return {
            "target": self.target,
            "backup_id": self.backup_id,
            "pinned_at": format_time(self.pinned_at),
            "note": self.note,
        }


def write_pin(storage: Storage, pin: Pin) -> bool:
    """Store ``pin`` unless the backup is already pinned; return True when a marker was written.

    An existing marker is left as it is, so the first pin's time and note survive. Raises
    StorageError.
    """
    key = pin_key(pin.target, pin.backup_id)
    if storage.exists(key):
        return False
    write_json(storage, key, pin.to_dict())
    return True


def remove_pin(storage: Storage, target: str, backup_id: str) -> bool:
    """Delete the pin of a backup; return True when there was one.

    On an S3 bucket with Object Lock *default* retention the pin object is retained like every
    new object and its delete is refused: it is hidden behind a delete marker instead, after
    which no listing or existence check sees it, so retention decides about the backup again
    (its retained version waits out its date). Raises StorageError, and ObjectLocked where the
    store can neither delete nor hide it (a GCS or Azure retention policy).
    """
    key = pin_key(target, backup_id)
    if not storage.exists(key):
        return False
    delete_or_hide(storage, key)
    return True


def is_pinned(storage: Storage, manifest: Manifest) -> bool:
    """Return True when the backup has a pin marker. Raises StorageError."""
    return storage.exists(pin_key(manifest.target, manifest.id))


def pinned_ids(storage: Storage, target: str, keys: Iterable[str] | None = None) -> frozenset[str]:
    """Return the ids of the backups of ``target`` that have a pin marker.

    ``keys`` (a listing of ``<target>/``) saves a listing when the caller has one. Raises
    StorageError.
    """
    if keys is None:
        keys = (info.key for info in storage.list(f"{target}/"))
    ids = set()
    for key in keys:
        parts = split_backup_key(key)
        if parts is not None and parts[0] == target and parts[2] == PIN_NAME:
            ids.add(parts[1])
    return frozenset(ids)
