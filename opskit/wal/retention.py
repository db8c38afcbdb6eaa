"""WAL retention: delete archived WAL only when no kept base backup needs it.

A base backup needs every segment from its ``wal_start`` on (recovery replays forward from
there, across timeline switches, whose segment numbers only grow). So the archive keeps
every segment numbered at or after the oldest kept base backup's first segment, on every
timeline, and all ``.history`` files (tiny, and recovery reads them to follow timelines).
With no base backup kept, nothing is deleted: an archive without a base is a prune policy
mistake to report, not to act on. The decision (:func:`plan_wal_deletes`) is pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opskit.catalog import Manifest
from opskit.core.log import get_logger
from opskit.storage.base import Storage
from opskit.wal import layout

log = get_logger(__name__)


def _segno_of(name: str) -> int | None:
    """Return the segment number a WAL object name refers to (segments, .partial, .backup), else None."""
    if layout.is_history_name(name) or not layout.is_segment_name(name[:24]):
        return None
    return layout.segment_number(name[:24])[1]


def plan_wal_deletes(keys: Iterable[str], kept: Sequence[Manifest]) -> list[str]:
    """Return the WAL keys (objects and their ``.sha256`` records) that no base backup in ``kept`` needs."""
    starts = [str(m.base.get("wal_start", "")) for m in kept if m.kind == "base"]
    starts = [s for s in starts if layout.is_segment_name(s)]
    if not starts:
        return []
    cutoff = min(layout.segment_number(s)[1] for s in starts)
    doomed = []
    for key in keys:
        last = key.rsplit("/", 1)[-1]
        name = layout.name_of_key(key) or (last[: -len(".sha256")] if last.endswith(".sha256") else None)
        if name is None:
            continue
        segno = _segno_of(name)
        if segno is not None and segno < cutoff:
            doomed.append(key)
    return sorted(doomed)


def prune_wal(
    store: Storage, target: str, kept: Sequence[Manifest], dry_run: bool, check: Callable[[], None] | None = None
) -> list[str]:
    """Delete (or with ``dry_run`` only list) the WAL of ``target`` no kept base backup needs; return the keys.

    ``check`` runs before the deletes (the prune's lock check). Raises StorageError.
    """
    keys = [info.key for info in store.list(layout.wal_prefix(target))]
    doomed = plan_wal_deletes(keys, kept)
    if doomed and not dry_run:
        if check is not None:
            check()
        for key in doomed:
            store.delete(key)
    if doomed:
        log.info("wal pruned", target=target, objects=len(doomed), dry_run=dry_run)
    return doomed
