"""``opskit prune``: apply each target's retention policy to each of its storages.

For every (target, storage): list the complete backups, read pins and the newest passing
verification of each kind, ``retention.plan()`` them (the rules apply to logical dumps and
base backups apart; a plan that would delete every backup of one kind is refused), delete what the plan says (manifest first, so a
half-deleted backup is never listed as complete, then the rest of its objects), and sweep
leftovers of failed runs older than the grace period: objects under ``<target>/<id>/``
with no manifest, and incomplete uploads of storages implementing ``IncompleteUploads``
(S3 multipart). Objects outside backup directories (``drills/``, anything unknown) are
never swept.

Each (target, storage) is pruned under an exclusive repository lock (``catalog.locks``): a
running backup, copy, pin or drill makes the prune of that storage exit 7 instead of racing
it. Just before each delete the prune re-reads the backup's pin and checks its lock is still
its own; the sweep leaves alone any directory a live lock names, whatever ``grace`` says.

On a storage whose objects can be immutable (``storage.base.ObjectLocks``: S3 with Object
Lock), the retain-until date of every object of a backup the plan would delete is read
first, and a backup still locked is kept with the reason ``immutable until <date>`` (dry
runs show it too). A delete the storage refuses all the same (a retention extended since)
is recorded in ``locked`` and logged, not a failure: the object is where it should be.

The plan of a storage is :func:`opskit.backup.retained.storage_plan`, the one ``opskit copy``
follows too, so a copy never brings back what prune deletes. On a secondary storage the
primary's verifications count for copies with the same stored bytes (the primary must be
readable: without it the "newest verified" floor of the secondary is unknown, and that pair
fails rather than delete what may be the last verified copy).

One failing (target, storage) does not stop the others; ``PruneFailed`` at the end names
them all and carries the report so the CLI can still print every plan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from opskit import catalog
from opskit.backup import server as server_backup
from opskit.backup.retained import storage_plan
from opskit.catalog.runs import fold_runs
from opskit.config.model import TargetConfig
from opskit.config.retention import RetentionPolicy
from opskit.context import AppContext
from opskit.core.errors import (
    BackupFailed,
    ConfigError,
    LockHeld,
    ObjectLocked,
    OpskitError,
    PruneFailed,
    UnreachableError,
)
from opskit.core.log import get_logger
from opskit.core.units import parse_duration
from opskit.plan import retention
from opskit.storage.base import IncompleteUploads, ObjectInfo, Storage
from opskit.wal.retention import prune_wal

log = get_logger(__name__)
DEFAULT_GRACE = timedelta(hours=24)


@dataclass
class StorageResult:
    """The outcome of pruning one target in one storage."""

    target: str
    storage: str
    plan: retention.Plan | None = None
    deleted: list[str] = field(default_factory=list)  # backup ids whose manifest was removed
    swept: list[str] = field(default_factory=list)  # leftover object keys removed (or to remove, dry run)
    aborted_uploads: list[str] = field(default_factory=list)
    bad_manifests: list[str] = field(default_factory=list)
    pinned_since_plan: list[str] = field(default_factory=list)  # planned for deletion, pinned before it came
    locked: list[str] = field(default_factory=list)  # "key: immutable until ...": deletes the storage refused
    wal_deleted: list[str] = field(default_factory=list)  # WAL keys no kept base backup needs (opskit.wal.retention)
    runs_folded: list[str] = field(default_factory=list)  # run records older than keep_runs, folded into the tally
    error: str | None = None
    lock_held: LockHeld | None = None  # set when another run held the repository lock
    unreachable: bool = False  # the error was a storage that could not be reached (exit 3)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "target": self.target,
            "storage": self.storage,
            "plan": self.plan.to_dict() if self.plan else None,
            "deleted": self.deleted,
            "swept": self.swept,
            "aborted_uploads": self.aborted_uploads,
            "bad_manifests": self.bad_manifests,
            "pinned_since_plan": self.pinned_since_plan,
            "locked": self.locked,
            "wal_deleted": self.wal_deleted,
            "runs_folded": self.runs_folded,
            "error": self.error,
        }


@dataclass
class PruneReport:
    """Everything one prune run decided and did."""

    now: datetime
    dry_run: bool
    grace: timedelta
    results: list[StorageResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # target -> why it was not pruned

    @property
    def failures(self) -> list[StorageResult]:
        """Return the results that ended in an error."""
        return [r for r in self.results if r.error]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready report."""
        return {
            "now": catalog.format_time(self.now),
            "dry_run": self.dry_run,
            "grace_seconds": int(self.grace.total_seconds()),
            "results": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
        }


def run(
    ctx: AppContext,
    target: str | None = None,
    all_targets: bool = False,
    storage: str | None = None,
    dry_run: bool = False,
    grace: timedelta | str = DEFAULT_GRACE,
) -> PruneReport:
    """Prune one target (or every target with ``all_targets``), in every storage or only ``storage``.

    ``grace`` is how old a leftover must be before it is swept (a timedelta, or text such as ``24h``).
    Returns the PruneReport. Raises ConfigError for unknown names, PruneFailed naming every
    (target, storage) that failed, after trying all of them (exit 4; 3 when every failed pair
    was unreachable), LockHeld (7) when every failure was a lock conflict.
    """
    if isinstance(grace, str):  # daemon jobs pass "24h" from TOML
        try:
            grace = parse_duration(grace)
        except ValueError as exc:
            raise ConfigError(f"prune grace period: {exc}") from exc
    dry_run = dry_run or ctx.dry_run
    now = ctx.clock()
    report = PruneReport(now=now, dry_run=dry_run, grace=grace)
    if storage is not None:
        ctx.config.storage(storage)  # unknown name: ConfigError now, not a silent no-op
    chosen = list(ctx.config.targets.values()) if all_targets else [ctx.target(target)]
    # A server target is pruned per database: each derived target its storages hold, with its policy.
    targets = [t for c in chosen for t in server_backup.covered_targets(ctx, c)]
    for target_config in targets:
        if target_config.retention is None:
            report.skipped[target_config.name] = "no retention policy: never pruned"
            continue
        if storage is not None and storage not in target_config.storages:
            if not all_targets:
                raise ConfigError(
                    f"target '{target_config.name}' does not use storage '{storage}'",
                    hint=f"its storages: {', '.join(target_config.storages)}",
                )
            report.skipped[target_config.name] = f"does not use storage '{storage}'"
            continue
        policy: RetentionPolicy = ctx.config.retention[target_config.retention]
        for storage_name in (storage,) if storage else target_config.storages:
            report.results.append(_prune_one(ctx, target_config, storage_name, policy, now, grace, dry_run))

    deleted = sum(len(r.deleted) for r in report.results)
    swept = sum(len(r.swept) + len(r.aborted_uploads) for r in report.results)
    log.info(
        "prune finished",
        dry_run=dry_run,
        deleted=deleted,
        swept=swept,
        failed=len(report.failures),
        skipped=sorted(report.skipped),
    )
    locked_out = [r.lock_held for r in report.failures if r.lock_held is not None]
    if locked_out and len(locked_out) == len(report.failures):
        # Only lock conflicts: exit 7 with the holder's line, as every other locked verb does.
        raise locked_out[0]
    if report.failures:
        names = "; ".join(f"{r.target} in {r.storage}: {r.error}" for r in report.failures)
        raise PruneFailed(
            f"prune failed for {len(report.failures)} target/storage pair(s): {names}",
            hint=_failure_hint(report),
            report=report,
            unreachable=all(r.unreachable for r in report.failures),  # core/errors.py's rule: then exit 3
        )
    return report


def _failure_hint(report: PruneReport) -> str:
    """Return what to do after failed pairs: a full volume says what prune itself needs to run."""
    if any("no space left on device" in (r.error or "") for r in report.failures):
        # Prune writes a lock of a few hundred bytes before it deletes anything: on a volume with
        # no byte left it cannot start, so the operator has to free that much first.
        hint = "the volume is full and prune cannot write its lock (under 1 KiB); free a little space on it and run prune again"
    else:
        hint = "fix the cause and run prune again"
    if len(report.results) > len(report.failures):
        hint += "; the other targets and storages were pruned"
    return hint


def _prune_one(
    ctx: AppContext,
    target: TargetConfig,
    storage_name: str,
    policy: RetentionPolicy,
    now: datetime,
    grace: timedelta,
    dry_run: bool,
) -> StorageResult:
    """Plan, delete and sweep one target in one storage; record an error instead of raising."""
    result = StorageResult(target=target.name, storage=storage_name)
    with structlog.contextvars.bound_contextvars(target=target.name, storage=storage_name):
        try:
            store = ctx.storage(storage_name)
            # A secondary's "newest verified" counts the primary's verifications of identical copies.
            primary = ctx.storage(target.primary_storage) if storage_name != target.primary_storage else None
            if dry_run:
                # A dry run deletes nothing, so it takes no lock and blocks no backup.
                _plan_and_delete(store, primary, target.name, policy, now, dry_run, result, None)
                _sweep(store, target.name, now, now - grace, dry_run, result, None)
                result.wal_deleted = prune_wal(store, target.name, _kept(store, target.name, result), dry_run)
                result.runs_folded = fold_runs(store, target.name, now - policy.keep_runs, dry_run)
            else:
                with catalog.locked(store, target.name, "prune", clock=ctx.clock) as lock:
                    _plan_and_delete(store, primary, target.name, policy, now, dry_run, result, lock)
                    _sweep(store, target.name, now, now - grace, dry_run, result, lock)
                    kept = _kept(store, target.name, result)
                    result.wal_deleted = prune_wal(store, target.name, kept, dry_run, check=lock.check)
                    result.runs_folded = fold_runs(store, target.name, now - policy.keep_runs, check=lock.check)
        except LockHeld as exc:
            result.error = exc.one_line()
            result.lock_held = exc
            log.warning("prune skipped: the repository is locked", error=result.error)
        except OpskitError as exc:
            result.error = exc.one_line()
            result.unreachable = exc.exit_code == UnreachableError.exit_code
            log.error("prune failed", error=result.error)
    return result


def _plan_and_delete(
    store: Storage,
    primary: Storage | None,
    target: str,
    policy: RetentionPolicy,
    now: datetime,
    dry_run: bool,
    result: StorageResult,
    lock: catalog.RepositoryLock | None,
) -> None:
    bad: list[catalog.BadManifest] = []
    backups = catalog.list_backups(store, target, bad=bad)
    result.bad_manifests = [f"{b.backup_id}: {b.error}" for b in bad]
    for item in bad:
        log.warning("unreadable manifest left alone", backup_id=item.backup_id, error=item.error)
    result.plan = storage_plan(store, target, backups, policy, now, primary=primary)
    doomed = [d.id for d in result.plan.deleted]
    for kind in result.plan.emptied_kinds:
        # The plan's min_keep and "newest verified" rules (per kind) should make this impossible;
        # refuse anyway. A future-dated backup is kept but does not count: it cannot stand in for
        # the last real one. The last base backup is what every archived WAL segment replays onto.
        count = sum(1 for d in result.plan.deleted if d.kind == kind)
        what = "base backups (point-in-time recovery would be lost)" if kind == "base" else f"{kind} backups"
        raise BackupFailed(
            f"the plan would delete all {count} {what} of '{target}' in storage '{store.name}' "
            "that are not future-dated; "
            "refusing to delete the last good backup of a kind",
            hint="check the retention policy (min_keep >= 1 keeps one of each kind) and the clock",
        )
    by_id = {m.id: m for m in backups}
    for backup_id in doomed:
        if not dry_run:
            # Re-read just before deleting: the plan is minutes old on a big repository. A lock
            # removed under us (opskit unlock --all) means we are no longer alone; a pin written
            # since the plan (an opskit without locks, a person with the storage console) wins.
            if lock is not None:
                lock.check()
            if store.exists(catalog.pin_key(target, backup_id)):
                result.pinned_since_plan.append(backup_id)
                log.info("backup pinned since the plan was made: kept", backup_id=backup_id)
                continue
            try:
                _delete_backup(store, by_id[backup_id])
            except ObjectLocked as exc:
                result.locked.append(exc.one_line())
                log.warning("the storage refused to delete an immutable object: kept", backup_id=backup_id)
                continue
        result.deleted.append(backup_id)


def _delete_backup(store: Storage, manifest: catalog.Manifest) -> None:
    """Delete the manifest first (the backup stops existing), then every other object under its prefix."""
    store.delete(catalog.manifest_key(manifest.target, manifest.id))
    for info in list(store.list(manifest.prefix + "/")):
        store.delete(info.key)
    log.info("backup deleted", backup_id=manifest.id)


def _sweep(
    store: Storage,
    target: str,
    now: datetime,
    older_than: datetime,
    dry_run: bool,
    result: StorageResult,
    lock: catalog.RepositoryLock | None,
) -> None:
    """Remove objects of backup directories with no manifest last modified before ``older_than``.

    A directory a live lock names (a backup or copy still writing it) is never swept, whatever
    the grace period: an artifact committed before the manifest is not a leftover yet.
    """
    alive = catalog.live_backup_ids(store, target, now, held=lock)  # judged by the storage's time
    groups: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in store.list(f"{target}/"):
        parts = info.key.split("/")
        if len(parts) >= 3 and parts[0] == target and catalog.is_backup_id(parts[1]):
            groups[parts[1]].append(info)
    for backup_id, objects in sorted(groups.items()):
        if any(o.key == catalog.manifest_key(target, backup_id) for o in objects):
            continue  # a complete (or unreadable, but committed) backup: not a leftover
        if backup_id in alive:
            continue  # its run holds a live lock: it is still writing, whatever the grace says
        if any(o.modified >= older_than for o in objects):
            continue  # a run may still be writing it: wait out the grace period
        # Re-check: a slow backup may have committed since the listing.
        if store.exists(catalog.manifest_key(target, backup_id)):
            continue
        if lock is not None:
            lock.check()
        for info in objects:
            if not dry_run:
                try:
                    store.delete(info.key)
                except ObjectLocked as exc:
                    # A failed backup's artifacts are written immutable too: they wait out their lock.
                    result.locked.append(exc.one_line())
                    continue
            result.swept.append(info.key)
        log.info("leftover swept", backup_id=backup_id, objects=len(objects), dry_run=dry_run)
    if isinstance(store, IncompleteUploads):
        result.aborted_uploads = store.abort_incomplete_uploads(f"{target}/", older_than, dry_run)


def _kept(store: Storage, target: str, result: StorageResult) -> list[catalog.Manifest]:
    """Return the backups of ``target`` the run keeps: those listed, minus the deleted (or, dry, to be deleted)."""
    return [m for m in catalog.list_backups(store, target) if m.id not in result.deleted]
