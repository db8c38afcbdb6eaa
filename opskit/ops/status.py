"""``opskit status``: per target, is it protected as the objectives say? Everything is read from storage.

For each target (every target that is not another's staging target, or the one asked for):

- the newest complete backup (time, age, size) and which of the target's storages hold it;
- current RPO and worst RPO over 7 days against the target (docs/operations.md §2),
  and, said plainly, when the schedule itself cannot meet the target;
- 3-2-1 for the newest backup: >= 3 copies counting the live database, >= 2 distinct storage
  kinds (``file``, ``s3``, ``gs``, ``az``), >= 1 storage marked ``offsite = true``. A base
  backup counts only in a storage that also holds the WAL it needs to be consistent (every
  segment from its ``wal_start`` to its ``wal_stop``): without it, that copy restores nothing
  (``opskit copy`` carries the WAL); each storage lists its base backups that lack WAL;
- the PITR window (the oldest base backup's consistent point .. when the newest WAL was stored);
  right after the first base backup, before WAL written after it is stored, no window but a
  warning that names the backup waiting for WAL (never an end before the start);
- a warning when WAL is archived but no base backup is kept: point-in-time recovery is impossible;
- the last verification record and the last drill (verdict, measured and estimated RTO); a
  failed one is a warning;
- per storage that can hold immutable objects (S3 Object Lock): whether its bucket enforces
  them, and until when the newest backup there is locked (its manifest's retain-until date,
  the latest of its objects: it is written last), so the primary and the offsite copies can
  each be seen to be immutable or not;
- WAL archiving, where known: the slot lag and the archive lag in bytes (read from the target's
  server: the streamer may run in another process) and the streamer's spool against
  ``wal.max_spool`` (only where the spool directory is local); see :mod:`opskit.wal.lag`.

A storage that cannot be reached makes status exit 3 (after the whole report is shown),
before any breach. Breached (exit 6): the current RPO is above the target, the backup interval alone exceeds it,
the last drill's estimated RTO is above the RTO target, or a backup is future-dated (its
snapshot time is beyond ``timeline.CLOCK_SKEW`` ahead of the clock: a host with a wrong
clock). A future-dated backup is never "the newest": the RPO is measured without it. A worst-over-7-days above the target
with a current RPO within it is a warning: it happened, and it is shown, but it is over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opskit import catalog
from opskit.backup import server as server_backup
from opskit.catalog import Manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ObjectiveBreached, OpskitError, UnreachableError
from opskit.core.log import get_logger
from opskit.plan import objectives, timeline
from opskit.restore import pitr_model
from opskit.storage.base import ObjectLocks, Storage
from opskit.wal import lag, layout, stream
from opskit.wal.archive import newest_archived
from opskit.wal.replicate import missing_for_consistency

log = get_logger(__name__)

RPO_WINDOW = timedelta(days=7)


@dataclass
class StorageState:
    """What one storage holds for a target."""

    name: str
    kind: str
    offsite: bool
    backups: int = 0
    newest_id: str | None = None
    newest_time: datetime | None = None
    error: str | None = None
    unreachable: bool = False  # the error was a store that could not be reached (status exits 3)
    object_lock: bool | None = None  # the bucket enforces retention (None: unknown or not applicable)
    object_lock_detail: str | None = None
    immutable_until: datetime | None = None  # the newest backup here is locked until then (future only)
    # Base backups here whose WAL (wal_start .. wal_stop) this storage lacks -> the first missing segment.
    without_wal: dict[str, str] = field(default_factory=dict)

    @property
    def immutable(self) -> bool:
        """Return True when the newest backup in this storage is under retention."""
        return self.immutable_until is not None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "offsite": self.offsite,
            "backups": self.backups,
            "newest_id": self.newest_id,
            "newest_time": catalog.format_time(self.newest_time) if self.newest_time else None,
            "immutability": {
                "object_lock": self.object_lock,
                "detail": self.object_lock_detail,
                "newest_immutable": self.immutable,
                "newest_immutable_until": catalog.format_time(self.immutable_until) if self.immutable_until else None,
            },
            "base_backups_without_wal": [
                {"id": backup_id, "missing_segment": segment} for backup_id, segment in self.without_wal.items()
            ],
            "error": self.error,
        }


@dataclass
class TargetStatus:
    """The protection state of one target."""

    target: str
    now: datetime
    rpo: objectives.RpoAssessment
    rto_target: timedelta
    newest: Manifest | None = None
    holders: list[str] = field(default_factory=list)
    storages: list[StorageState] = field(default_factory=list)
    copies: int = 1
    kinds: list[str] = field(default_factory=list)
    offsite: list[str] = field(default_factory=list)
    last_verify: dict[str, Any] | None = None
    last_drill: dict[str, Any] | None = None
    rto: objectives.RtoAssessment | None = None
    future: list[Manifest] = field(default_factory=list)  # future-dated backups, newest first
    warnings: list[str] = field(default_factory=list)
    # Point-in-time recovery: the oldest base backup .. the newest archived WAL, and the RPO from it.
    pitr: dict[str, Any] | None = None
    # WAL archiving: slot and archive lag, spool size (None without [wal] and without archived WAL).
    wal: dict[str, Any] | None = None

    @property
    def three_two_one(self) -> bool:
        """Return True when the newest backup satisfies 3-2-1."""
        return self.copies >= 3 and len(self.kinds) >= 2 and len(self.offsite) >= 1

    @property
    def breaches(self) -> list[str]:
        """Return one plain sentence per breached objective."""
        found = [f"clock: {timeline.describe_future(m.id, m.snapshot_time, self.now)}" for m in self.future]
        if self.rpo.breached or self.rpo.schedule_too_sparse:
            found.append(f"RPO: {self.rpo.explain()}")
        if self.rto is not None and self.rto.status == objectives.BREACHED:
            found.append(
                f"RTO: the last drill's estimated RTO is {objectives.short(self.rto.estimated)}, "
                f"target {objectives.short(self.rto.target)}"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready status of the target."""
        newest = self.newest
        return {
            "target": self.target,
            "now": catalog.format_time(self.now),
            "newest_backup": None
            if newest is None
            else {
                "id": newest.id,
                "snapshot_time": catalog.format_time(newest.snapshot_time),
                "finished_at": catalog.format_time(newest.finished_at),
                "age_seconds": (self.now - newest.snapshot_time).total_seconds(),
                "size": newest.size,
                "storages": self.holders,
            },
            "storages": [s.to_dict() for s in self.storages],
            "rpo": {
                "target_seconds": self.rpo.target.total_seconds(),
                "current_seconds": _seconds(self.rpo.current),
                "worst_seconds": _seconds(self.rpo.worst),
                "window_seconds": self.rpo.window.total_seconds(),
                "typical_interval_seconds": _seconds(self.rpo.typical_interval),
                "status": self.rpo.status,
                "schedule_meets_target": not self.rpo.schedule_too_sparse,
                "summary": self.rpo.explain(),
            },
            "three_two_one": {
                "holds": self.three_two_one,
                "copies": self.copies,
                "storage_kinds": self.kinds,
                "offsite": self.offsite,
            },
            "last_verify": self.last_verify,
            "last_drill": self.last_drill,
            "rto": None
            if self.rto is None
            else {
                "measured_seconds": self.rto.measured.total_seconds(),
                "estimated_seconds": self.rto.estimated.total_seconds(),
                "target_seconds": self.rto.target.total_seconds(),
                "status": self.rto.status,
            },
            "future_dated": [{"id": m.id, "snapshot_time": catalog.format_time(m.snapshot_time)} for m in self.future],
            "breaches": self.breaches,
            "warnings": self.warnings,
            "pitr": self.pitr,
            "wal": self.wal,
        }


@dataclass
class StatusReport:
    """The status of every target asked for."""

    targets: list[TargetStatus]

    @property
    def breaches(self) -> list[str]:
        """Return every breach, prefixed with its target."""
        return [f"{t.target}: {b}" for t in self.targets for b in t.breaches]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready report."""
        return {"targets": [t.to_dict() for t in self.targets], "breached": bool(self.breaches)}

    def raise_for_breach(self) -> None:
        """Raise UnreachableError (3) when a storage could not be reached, else ObjectiveBreached (6) for a breach.

        Unreachable comes first (core/errors.py's rule): without that storage's backups, a breach
        may be only what the other storages lack, and the fix is the network or the credentials.
        """
        unreachable = [(t.target, s) for t in self.targets for s in t.storages if s.unreachable]
        if unreachable:
            raise UnreachableError(
                "status: "
                + "; ".join(f"storage '{s.name}' of target '{target}': {s.error}" for target, s in unreachable),
                hint="fix the network, the credentials or the URL; the objectives cannot be judged without it",
            )
        if self.breaches:
            raise ObjectiveBreached(
                "objective breached: " + "; ".join(self.breaches),
                hint="take a backup now, schedule backups at least as often as the RPO target, "
                "and fix the clock of any host named above",
            )

    def raise_for_outcome(self) -> None:
        """The name every action result shares (the daemon calls it): see :meth:`raise_for_breach`."""
        self.raise_for_breach()


def _seconds(delta: timedelta | None) -> float | None:
    return delta.total_seconds() if delta is not None else None


def status_targets(ctx: AppContext, target: str | None) -> list[TargetConfig]:
    """Return the targets to report: the one named, else every target that is not a staging target.

    A server target reports one row per database (backup/server.py ``covered_targets``): those
    its storages hold and those the server has now, so a new database without a backup breaches.
    """
    if target is not None:
        chosen = [ctx.target(target)]
    else:
        staging = {t.staging for t in ctx.config.targets.values() if t.staging}
        chosen = [t for name, t in ctx.config.targets.items() if name not in staging]
    return [row for t in chosen for row in server_backup.covered_targets(ctx, t, live=True)]


def run(ctx: AppContext, target: str | None = None) -> StatusReport:
    """Return the status of ``target`` (or every protected target). Nothing is changed.

    A storage that cannot be listed is reported in its entry, not raised, so one broken
    storage does not hide the others. Raises ConfigError for an unknown target.
    """
    now = ctx.clock()
    report = StatusReport([target_status(ctx, t, now) for t in status_targets(ctx, target)])
    log.info("status", targets=len(report.targets), breaches=len(report.breaches))
    return report


def target_status(ctx: AppContext, target: TargetConfig, now: datetime) -> TargetStatus:
    """Return the status of one target at ``now``."""
    by_id: dict[str, Manifest] = {}
    held: dict[str, list[str]] = {}
    states: list[StorageState] = []
    opened: dict[str, Storage] = {}
    status_warnings: list[str] = []
    for name in target.storages:
        config = ctx.storage_config(name)
        state = StorageState(name=name, kind=config.kind, offsite=config.offsite)
        states.append(state)
        try:
            store = ctx.storage(name)
            backups = catalog.list_backups(store, target.name)
        except OpskitError as exc:
            state.error = exc.one_line()
            state.unreachable = exc.exit_code == UnreachableError.exit_code
            continue
        opened[name] = store
        state.backups = len(backups)
        newest_here = catalog.latest_backup(backups, now)
        if newest_here is not None:
            state.newest_id, state.newest_time = newest_here.id, newest_here.snapshot_time
        _read_immutability(store, state, target.name, now)
        _read_wal_coverage(store, state, target.name, backups, status_warnings)
        for manifest in backups:
            by_id.setdefault(manifest.id, manifest)
            held.setdefault(manifest.id, []).append(name)
    present = timeline.present(by_id.values(), now)
    points = [objectives.BackupPoint(m.snapshot_time, m.finished_at) for m in present]
    status = TargetStatus(
        target=target.name,
        now=now,
        rpo=objectives.assess_rpo(points, now, ctx.config.objectives.rpo, RPO_WINDOW),
        rto_target=ctx.config.objectives.rto,
        storages=states,
        future=sorted(timeline.future(by_id.values(), now), key=lambda m: (m.snapshot_time, m.id), reverse=True),
    )
    if present:
        newest = max(present, key=lambda m: (m.snapshot_time, m.id))
        status.newest = newest
        status.holders = held[newest.id]
        # A base backup without its WAL in a storage is no copy: it cannot be made consistent there.
        states_by_name = {state.name: state for state in states}
        counted = [name for name in status.holders if newest.id not in states_by_name[name].without_wal]
        for name in status.holders:
            if name not in counted:
                status.warnings.append(
                    f"storage '{name}' holds the newest backup {newest.id} (base) but not the WAL it needs to be "
                    f"consistent (segment {states_by_name[name].without_wal[newest.id]} is missing): "
                    "not counted toward 3-2-1; run 'opskit copy'"
                )
        configs = [ctx.storage_config(name) for name in counted]
        status.copies = 1 + len(configs)
        status.kinds = sorted({c.kind for c in configs})
        status.offsite = [c.name for c in configs if c.offsite]
    status.warnings.extend(status_warnings)
    status.pitr = _pitr_window(opened.get(target.primary_storage), target.name, present, now)
    if status.pitr is not None and status.pitr.get("note"):
        status.warnings.append(status.pitr["note"])  # the text view's window line has no end to show yet
    status.wal = _wal_state(ctx, target, opened.get(target.primary_storage), status.pitr)
    if status.pitr is None and _wal_archived(opened.get(target.primary_storage), target.name, status.wal):
        status.warnings.append(
            "WAL is archived but no base backup is kept: point-in-time recovery is impossible; "
            "take one now (opskit backup now --kind base) and check the retention policy"
        )
    if not status.three_two_one:
        status.warnings.append(
            f"3-2-1 does not hold for the newest backup: {status.copies} copies "
            "(>= 3 counting the live database), "
            f"{len(status.kinds)} storage kinds (>= 2), {len(status.offsite)} offsite (>= 1)"
        )
    if not status.rpo.breached and status.rpo.worst_breached and not status.rpo.schedule_too_sparse:
        status.warnings.append(
            f"the worst RPO over {objectives.short(RPO_WINDOW)} was "
            f"{objectives.short(status.rpo.worst or 0)}, "
            f"above the target {objectives.short(status.rpo.target)}"
        )
    for store in opened.values():
        if status.last_verify is None:
            status.last_verify = last_verification(store, target.name)
    _warn_failed_verification(status)
    drill = _newest_drill(opened.values(), target.name, status)
    if drill is not None:
        status.last_drill = drill.summary()
        if drill.measured_rto_seconds is not None:
            status.rto = objectives.RtoAssessment(
                measured=timedelta(seconds=drill.measured_rto_seconds),
                allowances=ctx.config.objectives.allowances,
                target=ctx.config.objectives.rto,
            )
        elif drill.rto_status == catalog.RTO_UNMEASURED:
            status.warnings.append(f"the last drill ({drill.drill_id}) restored nothing: the RTO is unmeasured")
        if not drill.passed:
            status.warnings.append(f"the last drill ({drill.drill_id}) failed")
    else:
        status.warnings.append("no restore drill has been run: the RTO is unmeasured")
    return status


def _read_immutability(store: Storage, state: StorageState, target: str, now: datetime) -> None:
    """Fill in whether ``store`` enforces retention and until when its newest backup is locked.

    A failure to read it is left in the detail, not raised: the rest of the status still holds.
    """
    if not isinstance(store, ObjectLocks):
        return
    try:
        lock = store.lock_state()
        state.object_lock, state.object_lock_detail = lock.enabled, lock.detail
        if state.newest_id is not None and lock.enabled is not False:
            until = store.retained_until(catalog.manifest_key(target, state.newest_id))
            state.immutable_until = until if until is not None and until > now else None
    except OpskitError as exc:
        state.object_lock_detail = f"cannot read its retention: {exc.one_line()}"


def _wal_archived(store: Storage | None, target: str, wal: dict[str, Any] | None) -> bool:
    """Return True when ``target`` has archived WAL in ``store`` (from the WAL state when read, else one listing)."""
    if wal is not None and wal.get("newest_segment"):
        return True
    if store is None:
        return False
    try:
        return newest_archived(store, target) is not None
    except OpskitError:
        return False  # the storage's own entry already says why


def _read_wal_coverage(
    store: Storage, state: StorageState, target: str, backups: list[Manifest], warnings: list[str]
) -> None:
    """Fill in the base backups in ``store`` that lack the WAL they need to be consistent, warning for each.

    One listing of the WAL, only when the storage holds a base backup. A failure to list it
    is a warning: the backups' own status stands without it.
    """
    bases = [m for m in backups if m.kind == "base"]
    if not bases:
        return
    try:
        names = {name for info in store.list(layout.wal_prefix(target)) if (name := layout.name_of_key(info.key))}
    except OpskitError as exc:
        warnings.append(f"cannot list the WAL in storage '{store.name}': {exc.one_line()}")
        return
    for manifest in bases:
        missing = missing_for_consistency(manifest, names)
        if missing:
            state.without_wal[manifest.id] = missing[0]
    if state.without_wal:
        warnings.append(
            f"storage '{store.name}' holds {len(state.without_wal)} base backup(s) without the WAL they need "
            f"({', '.join(sorted(state.without_wal))}): they cannot be restored from there; run 'opskit copy'"
        )


def _newest_drill(stores: Iterable[Storage], target: str, status: TargetStatus) -> catalog.DrillRecord | None:
    """Return the newest drill of ``target`` in any of ``stores``; a storage that cannot be read is a warning."""
    found: list[catalog.DrillRecord | None] = []
    for store in stores:
        try:
            found.append(catalog.latest_drill(store, target))
        except OpskitError as exc:
            status.warnings.append(f"cannot read drill reports in '{store.name}': {exc.one_line()}")
    return catalog.newest_drill(found)


def _warn_failed_verification(status: TargetStatus) -> None:
    """Add a warning to ``status`` when the target's newest verification failed (as a failed drill warns).

    A warning, not a breach: like the drill's, it does not change the exit code, but it must
    not read as "all is well" while the backup the RPO counts may be corrupt.
    """
    verify = status.last_verify
    if verify is None or verify.get("verdict") != catalog.FAIL:
        return
    newest = status.newest is not None and status.newest.id == verify["backup_id"]
    counted = " (the newest backup: the RPO counts it)" if newest else ""
    status.warnings.append(
        f"the last verification ({verify['time']}) of backup {verify['backup_id']} in storage "
        f"'{verify['storage']}' failed{counted}: do not rely on it; take a new backup and run "
        "'opskit backup verify --all'"
    )


def last_verification(store: Storage, target: str) -> dict[str, object] | None:
    """Return the summary of the newest ``verify`` record of any backup of ``target`` in ``store`` (None when none).

    Drills record their verdict the same way (kind ``drill``); those are skipped here.
    Raises StorageError when the storage cannot be listed.
    """
    record = catalog.latest_verify_run(store, target)
    if record is None:
        return None
    return {
        "time": catalog.format_time(record.time),
        "backup_id": record.backup_id,
        "storage": store.name,
        "level": record.level,
        "verdict": record.verdict,
    }


def _pitr_window(store: Storage | None, target: str, present: list[Manifest], now: datetime) -> dict[str, Any] | None:
    """Return the PITR window (``restore.pitr_model.pitr_window``) and its RPO as JSON, or None without base backups.

    Right after the first base backup, before WAL written after it reaches the storage, there
    is no window yet: ``newest_wal_archived_at`` is None (no end before the start) and
    ``waiting_for_wal_after`` and ``note`` name the backup; the RPO still counts the newest WAL.
    """
    bases = [m for m in present if m.kind == "base"]
    if store is None or not bases:
        return None
    try:
        window = pitr_model.pitr_window(store, target, present, now)
    except OpskitError as exc:
        return {"error": exc.one_line()}
    waiting = window is not None and window.waiting_for is not None
    return {
        "base_backups": len(bases),
        "oldest_restorable": catalog.format_time(min(m.snapshot_time for m in bases)),
        "newest_wal": window.newest_segment if window else None,
        "newest_wal_archived_at": catalog.format_time(window.end) if window and not waiting else None,
        "rpo_seconds": (now - window.archived_at).total_seconds() if window else None,
        "waiting_for_wal_after": window.waiting_for if window else None,
        "note": f"no moment is restorable by PITR yet: {window.waiting_note()}" if window and waiting else None,
    }


def _wal_state(
    ctx: AppContext, target: TargetConfig, store: Storage | None, pitr: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Return the slot lag, archive lag and spool of ``target`` where known; None when it has no WAL archiving.

    The newest archived segment comes from the PITR window when it was read, else from the
    archive (only with a ``[wal]`` section). An unreachable server is reported in ``error``,
    not raised: the backups' status stands without it.
    """
    settings = ctx.config.wal
    newest = pitr.get("newest_wal") if pitr else None
    if newest is None and settings is not None and store is not None:
        try:
            found = newest_archived(store, target.name)
        except OpskitError:
            found = None  # the storage's own entry already says why
        newest = found[0] if found else None
    if settings is None and newest is None:
        return None
    state: dict[str, Any] = {"slot": settings.slot if settings else None, "newest_segment": newest}
    if settings is not None:
        # tools.state_dir itself: status must not create the directory it reports on.
        spool = ctx.config.tools.state_dir / settings.spool_dir / target.name
        local = spool.is_dir()
        state["spool_bytes"] = stream.spool_size(spool) if local else None
        state["spool_limit_bytes"] = settings.max_spool
    try:
        found_lag = lag.server_lag(target, settings.slot if settings else None, newest)
    except OpskitError as exc:
        state["error"] = exc.one_line()
        return state
    state.update(found_lag.to_dict())
    return state
