"""What retention keeps in one storage: the plan ``opskit prune`` applies and ``opskit copy`` follows.

Prune and copy must agree on what each storage of a target holds, or they undo each other
run after run: prune deletes a backup from a secondary, the next copy brings it back (and
its WAL), the next prune deletes it again. So both ask :func:`storage_plan` for the plan of
the same storage, built from the same inputs:

- the backups (for copy: those the storage holds plus those it would receive),
- the pins in that storage (for copy, also the primary's pins of the backups it would
  receive: the copy carries them over),
- "newest verified" per kind from that storage's verification records, and on a secondary
  also from the primary's records of the same backup with the same stored bytes
  (:func:`opskit.catalog.verifications.newest_verified_id`),
- the retain-until dates of what the storage keeps immutable (``storage.base.ObjectLocks``).

Copy then copies only what the plan keeps (:func:`kept`), so a backup prune would delete is
never copied, and the WAL it carries is the WAL of the base backups the plan keeps, the WAL
prune keeps (:mod:`opskit.wal.retention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from opskit import catalog
from opskit.config.retention import RetentionPolicy
from opskit.plan import retention, timeline
from opskit.storage.base import ObjectLocks, Storage


def storage_plan(
    store: Storage,
    target: str,
    backups: Sequence[catalog.Manifest],
    policy: RetentionPolicy,
    now: datetime,
    *,
    primary: Storage | None = None,
    pinned: frozenset[str] = frozenset(),
) -> retention.Plan:
    """Return the retention plan of ``backups`` (any order) in ``store`` under ``policy`` at ``now``.

    ``primary`` is the target's primary storage when ``store`` is a secondary (its
    verifications vouch for identical copies); ``pinned`` adds pins to those ``store`` holds.
    A backup ``store`` holds locked past ``now`` is kept (``immutable until ...``). Raises
    StorageError when either storage cannot be read.
    """
    # Newest first, as list_backups orders them: "newest verified" walks them in this order.
    backups = sorted(backups, key=lambda m: (m.snapshot_time, m.id), reverse=True)
    keys = [info.key for info in store.list(f"{target}/")]
    pins = catalog.pinned_ids(store, target, keys) | pinned
    verified = newest_verified_per_kind(store, target, backups, now, primary)
    plan = retention.plan(backups, policy, now, pinned=pins, verified=verified)
    locked = locked_until(store, target, [d.id for d in plan.deleted], keys)
    if locked:
        plan = retention.plan(backups, policy, now, pinned=pins, verified=verified, locked=locked)
    return plan


def kept(plan: retention.Plan) -> frozenset[str]:
    """Return the ids of the backups ``plan`` leaves in the storage.

    Every backup when the plan would delete every present backup of a kind: prune then
    refuses and deletes nothing (``opskit.ops.prune``), so nothing is to be left out either.
    """
    if plan.emptied_kinds:
        return frozenset(d.id for d in plan.decisions)
    return frozenset(d.id for d in plan.kept)


def newest_verified_per_kind(
    store: Storage,
    target: str,
    backups: Sequence[catalog.Manifest],
    now: datetime,
    primary: Storage | None = None,
) -> frozenset[str]:
    """Return the id of the newest backup of each kind whose latest verification passed (the per-kind floor).

    A future-dated backup cannot be the "newest verified" floor: its age is unknown. With
    ``primary``, the primary's records count for identical copies. Raises StorageError.
    """
    present = timeline.present(backups, now)
    found = set()
    for kind in sorted({m.kind for m in present}):
        same_kind = [m for m in present if m.kind == kind]
        verified = catalog.newest_verified_id(store, target, same_kind, primary=primary)
        if verified:
            found.add(verified)
    return frozenset(found)


def locked_until(store: Storage, target: str, backup_ids: list[str], keys: list[str]) -> dict[str, datetime]:
    """Return the latest retain-until date of the objects of each backup in ``backup_ids`` that has one.

    Asked only of a storage that supports retention and whose bucket may enforce it (one
    HEAD per object of a backup about to be deleted). Raises StorageError.
    """
    if not isinstance(store, ObjectLocks) or not backup_ids or store.lock_state().enabled is False:
        return {}
    found: dict[str, datetime] = {}
    for backup_id in backup_ids:
        prefix = catalog.backup_prefix(target, backup_id) + "/"
        dates = [until for key in keys if key.startswith(prefix) and (until := store.retained_until(key))]
        if dates:
            found[backup_id] = max(dates)
    return found
