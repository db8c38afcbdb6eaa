"""``opskit copy``: replicate backups from a target's primary storage to its secondaries (3-2-1).

A copy is committed the same way as a backup: artifacts first, each checked against the
manifest's stored sha256 before it is committed, the manifest last. Copying is idempotent:
a backup whose manifest already exists on the destination is skipped.

A base backup is useless without its WAL, so the archived WAL a destination's base backups
need (:mod:`opskit.wal.replicate`) is copied too, before the base backups' manifests: a
base backup committed on a secondary has the WAL from its ``wal_start`` on, as far as the
primary had archived it. ``opskit copy`` copies the WAL first, then the backups; the copy
right after ``backup now --kind base`` copies that backup's WAL before its manifest.

``opskit copy`` copies only what the secondary's retention keeps: the plan prune applies to
that storage (:func:`opskit.backup.retained.storage_plan`) over the backups it holds and
those it lacks. A backup the plan deletes there is left out (``not_retained``), and so is
the WAL only such a backup would need; otherwise prune would delete it and the next copy
bring it back, run after run. A target without a retention policy is never pruned: every
backup it lacks is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opskit.backup.retained import kept, storage_plan
from opskit.catalog import (
    Manifest,
    check_artifacts_stored,
    list_backups,
    locked,
    manifest_key,
    pin_key,
    pinned_ids,
    write_manifest,
)
from opskit.catalog.artifacts import hash_stored
from opskit.context import AppContext
from opskit.core.errors import CopyFailed, LockHeld, OpskitError, UnreachableError, VerificationFailed
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pipeline import HashingReader, pump
from opskit.storage.base import ServerSideCopy, Storage
from opskit.wal.replicate import WalCopyResult, copy_wal

log = get_logger(__name__)


def copy_backup(ctx: AppContext, manifest: Manifest, source: Storage, dest: Storage, wal: bool = True) -> None:
    """Copy one backup's artifacts, then its manifest, from ``source`` to ``dest``.

    With ``wal`` (the copy after a backup), a base backup's archived WAL goes first
    (:func:`opskit.wal.replicate.copy_wal`); ``opskit copy`` copies WAL once per storage
    itself. Uses a server-side copy when both storages support it. Raises VerificationFailed
    (5) when an artifact's bytes (or a WAL file's) do not match their records (the source is
    corrupt: a retry cannot help), CopyFailed (4) when a storage fails; nothing is committed
    on ``dest`` as a backup unless every artifact arrived intact.
    """
    try:
        # A shared lock on the destination: its prune waits (exit 7) instead of sweeping the
        # artifacts this copy committed before its manifest, or the WAL it is copying.
        with locked(dest, manifest.target, "copy", clock=ctx.clock, backup_id=manifest.id):
            if wal and manifest.kind == "base":
                copy_wal(ctx, manifest.target, source, dest, [*list_backups(dest, manifest.target), manifest])
            _copy_objects(ctx, manifest, source, dest)
    except OpskitError as exc:
        if isinstance(exc, LockHeld) or exc.exit_code == UnreachableError.exit_code:
            raise  # the report counts lock conflicts and unreachable stores apart (their own exit codes)
        if isinstance(exc, VerificationFailed):
            # The source's bytes are wrong: copying again copies the same bytes, so say what helps (exit 5).
            raise VerificationFailed(
                f"copy of backup {manifest.id} to storage '{dest.name}' failed: {exc.message}",
                hint=exc.hint
                or f"run 'opskit backup verify {manifest.id} --target {manifest.target} --storage {source.name}'",
            ) from exc
        raise CopyFailed(
            f"copy of backup {manifest.id} to storage '{dest.name}' failed: {exc.message}",
            hint="it is retried by the next 'opskit copy'",
        ) from exc
    log.info("backup copied", backup_id=manifest.id, source=source.name, dest=dest.name)


def _copy_objects(ctx: AppContext, manifest: Manifest, source: Storage, dest: Storage) -> None:
    """Copy the artifacts (each checked against the manifest), then the manifest, then a pin."""
    for artifact in manifest.artifacts:
        if isinstance(dest, ServerSideCopy) and dest.copy_from(source, artifact.key):
            stats = hash_stored(dest, artifact, cancel=ctx.cancel)
            if (stats.size, stats.sha256) != (artifact.size, artifact.sha256):
                dest.delete(artifact.key)
                raise VerificationFailed(f"server-side copy of '{artifact.key}' does not match the manifest")
            continue
        with source.reader(artifact.key) as raw, dest.writer(artifact.key, immutable=True) as out:
            label = f"copy {manifest.id} {artifact.name}"
            with ByteProgress(label, ctx.interactive, expected=artifact.size) as progress:
                reader = HashingReader(raw, cancel=ctx.cancel, progress=progress)
                pump(reader, out)
            stats = reader.stats()
            if (stats.size, stats.sha256) != (artifact.size, artifact.sha256):
                # Raising inside the writer aborts it: the bad copy is never committed.
                raise VerificationFailed(
                    f"'{artifact.key}' in storage '{source.name}' does not match its manifest "
                    f"(sha256 {stats.sha256[:12]}..., expected {artifact.sha256[:12]}...)",
                    hint="run 'opskit backup verify' on the source storage",
                )
    check_artifacts_stored(dest, manifest)
    write_manifest(dest, manifest)
    _copy_pin(source, dest, manifest)


def _copy_pin(source: Storage, dest: Storage, manifest: Manifest) -> None:
    """Carry a pin over, so retention on the secondary keeps what the primary keeps pinned."""
    key = pin_key(manifest.target, manifest.id)
    if source.exists(key):
        with source.reader(key) as inp, dest.writer(key) as out:
            out.write(inp.read())


@dataclass
class CopyReport:
    """What one ``opskit copy`` run did, per (target, storage)."""

    copied: list[tuple[str, str, str]] = field(default_factory=list)  # (target, storage, backup id)
    skipped: int = 0
    # (target, storage, backup id): lacking there, but the storage's retention would delete it
    not_retained: list[tuple[str, str, str]] = field(default_factory=list)
    wal: list[tuple[str, str, WalCopyResult]] = field(default_factory=list)  # (target, storage, WAL copied)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (target, storage, error)
    locked: list[LockHeld] = field(default_factory=list)  # the failures that were lock conflicts
    unreachable: int = 0  # how many failures were a storage that could not be reached
    corrupt: list[VerificationFailed] = field(default_factory=list)  # the failures that were a corrupt source

    @property
    def exit_code(self) -> int:
        """Return 0 without failures, 7 when all were lock conflicts, 3 when all were unreachable,
        5 when all were a corrupt source, else 4."""
        if not self.failed:
            return 0
        if len(self.locked) == len(self.failed):
            return LockHeld.exit_code
        if len(self.corrupt) == len(self.failed):
            return VerificationFailed.exit_code
        if self.unreachable == len(self.failed):
            return UnreachableError.exit_code
        return CopyFailed.exit_code

    def raise_for_outcome(self) -> None:
        """Raise for the failed copies, with the code they share (core/errors.py's rule).

        LockHeld (7) when every failure was a lock conflict, UnreachableError (3) when every one
        was an unreachable storage, VerificationFailed (5) when every one was a corrupt source
        (its hint: verify the source), else CopyFailed (4) naming every copy that failed.
        """
        code = self.exit_code
        if code == LockHeld.exit_code:
            raise self.locked[0]
        if code == 0:
            return
        message = "copy failed: " + "; ".join(f"target '{t}' to '{s}': {e}" for t, s, e in self.failed)
        if code == VerificationFailed.exit_code:
            raise VerificationFailed(message, hint=self.corrupt[0].hint)
        if code == UnreachableError.exit_code:
            raise UnreachableError(
                message, hint="fix the network, the credentials or the URL, then run 'opskit copy' again"
            )
        raise CopyFailed(message, hint="fix the storage and run 'opskit copy' again")


def run(
    ctx: AppContext, target: str | None = None, storage: str | None = None, all_targets: bool = False
) -> CopyReport:
    """Copy every backup the primary has and a secondary lacks and would keep; carry on past failures.

    "Would keep": the secondary's retention plan keeps it (module docstring). Returns the
    report; ``raise_for_outcome()`` turns its failures into an exit code.
    """
    names = (
        list(ctx.config.targets)
        if all_targets or (target is None and len(ctx.config.targets) > 1)
        else [ctx.target(target).name]
    )
    report = CopyReport()
    for name in names:
        config = ctx.target(name)
        secondaries = [s for s in config.storages[1:] if storage is None or s == storage]
        if not secondaries:
            continue
        try:
            primary = ctx.storage(config.primary_storage)
            backups = list_backups(primary, name)
        except OpskitError as exc:
            report.failed.append((name, config.primary_storage, exc.one_line()))
            report.unreachable += exc.exit_code == UnreachableError.exit_code
            continue
        for dest_name in secondaries:
            _copy_to(ctx, report, name, primary, backups, dest_name)
    return report


def _copy_to(
    ctx: AppContext, report: CopyReport, target: str, primary: Storage, backups: list[Manifest], dest_name: str
) -> None:
    """Copy the WAL, then every backup ``dest_name`` lacks and keeps, of ``target``; record the outcome in ``report``."""
    try:
        dest = ctx.storage(dest_name)
        missing = []
        for manifest in reversed(backups):  # oldest first: a partial run still helps
            if dest.exists(manifest_key(target, manifest.id)):
                report.skipped += 1
            else:
                missing.append(manifest)
        held = list_backups(dest, target)
        keep = _retained(ctx, target, primary, dest, held, missing)
        if keep is not None:
            report.not_retained += [(target, dest_name, m.id) for m in missing if m.id not in keep]
            missing = [m for m in missing if m.id in keep]
            held = [m for m in held if m.id in keep]
        # The WAL first, for the backups the destination will hold: a base backup's manifest
        # is never there before the WAL that makes it consistent. Only the backups its prune
        # keeps count: the WAL of one it deletes would be deleted with it.
        will_hold = [*held, *missing]
        if ctx.dry_run:
            wal = copy_wal(ctx, target, primary, dest, will_hold, dry_run=True)
        else:
            with locked(dest, target, "copy", clock=ctx.clock):
                wal = copy_wal(ctx, target, primary, dest, will_hold)
        if wal.copied or wal.present:
            report.wal.append((target, dest_name, wal))
        for manifest in missing:
            if not ctx.dry_run:
                copy_backup(ctx, manifest, primary, dest, wal=False)
            report.copied.append((target, dest_name, manifest.id))
    except OpskitError as exc:
        report.failed.append((target, dest_name, exc.one_line()))
        if isinstance(exc, LockHeld):
            report.locked.append(exc)
        if isinstance(exc, VerificationFailed):
            report.corrupt.append(exc)
        report.unreachable += exc.exit_code == UnreachableError.exit_code


def _retained(
    ctx: AppContext, target: str, primary: Storage, dest: Storage, held: list[Manifest], missing: list[Manifest]
) -> frozenset[str] | None:
    """Return the ids of ``held`` and ``missing`` that ``dest``'s retention keeps, or None without a policy.

    The plan is the one prune would make once the copy is done: the backups ``dest`` holds and
    those it lacks, its pins plus the primary's pins of the ones it lacks (the copy carries
    them), verifications of either storage (``retained.storage_plan``). Raises StorageError.
    """
    name = ctx.target(target).retention
    if name is None:
        return None  # never pruned: everything is copied
    carried = pinned_ids(primary, target) & {m.id for m in missing}
    plan = storage_plan(
        dest, target, [*held, *missing], ctx.config.retention[name], ctx.clock(), primary=primary, pinned=carried
    )
    return kept(plan)
