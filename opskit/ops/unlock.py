"""``opskit unlock``: remove repository locks that protect nothing (or, with ``all_locks``, every lock).

A lock is stale when its holder stopped refreshing it (``catalog.locks.STALE_AFTER``, by the
storage's time, read from a probe object: never by this host's clock) or was written on this
host by a process that is gone; stale locks already block nobody, so
removing them is tidying. Removing a live lock (``all_locks``) is for an operator who knows
its holder is dead on a host opskit cannot see: the holder's next destructive step notices
and stops with exit 7.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opskit import catalog
from opskit.context import AppContext
from opskit.core.log import get_logger

log = get_logger(__name__)


@dataclass
class UnlockReport:
    """The locks found and removed (or that would be, in a dry run), per (target, storage)."""

    dry_run: bool
    all_locks: bool
    removed: list[tuple[str, str, str]] = field(default_factory=list)  # (target, storage, lock key)
    kept: list[tuple[str, str, str]] = field(default_factory=list)  # (target, storage, holder) of live locks

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "dry_run": self.dry_run,
            "all": self.all_locks,
            "removed": [dict(zip(("target", "storage", "key"), row, strict=True)) for row in self.removed],
            "kept": [dict(zip(("target", "storage", "holder"), row, strict=True)) for row in self.kept],
        }


def run(
    ctx: AppContext,
    target: str | None = None,
    storage: str | None = None,
    all_locks: bool = False,
    dry_run: bool = False,
) -> UnlockReport:
    """Remove the stale locks of one target (every target when ``target`` is None) in its storages.

    Returns the UnlockReport. Raises ConfigError for an unknown target or storage,
    StorageError when a storage fails.
    """
    dry_run = dry_run or ctx.dry_run
    report = UnlockReport(dry_run=dry_run, all_locks=all_locks)
    if storage is not None:
        ctx.config.storage(storage)  # an unknown name is an error, not a silent no-op
    names = [ctx.target(target).name] if target else list(ctx.config.targets)
    now = ctx.clock()
    for name in names:
        for storage_name in ctx.target(name).storages:
            if storage is not None and storage_name != storage:
                continue
            store = ctx.storage(storage_name)
            locks = catalog.list_locks(store, name)
            # unlock writes no lock of its own, so the storage's time comes from a probe: this
            # host's clock running fast would remove live locks, running slow keep dead ones.
            # Only when there is a lock to judge; --all judges none. A dry run on a read-only
            # credential judges by this host's clock (with a warning) rather than fail.
            storage_now = (
                catalog.read_storage_time(store, name, required=not dry_run) if locks and not all_locks else None
            )
            for lock in locks:
                if not all_locks and not lock.is_stale(now, storage_now=storage_now):
                    report.kept.append((name, storage_name, lock.describe(now, storage_now)))
            removed = catalog.remove_locks(
                store, name, now=now, storage_now=storage_now, stale_only=not all_locks, dry_run=dry_run
            )
            report.removed.extend((name, storage_name, key) for key in removed)
    log.info("unlock finished", removed=len(report.removed), kept=len(report.kept), dry_run=dry_run)
    return report
