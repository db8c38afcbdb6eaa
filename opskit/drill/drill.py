"""``opskit drill restore``: prove a backup restores, and measure RPO and RTO (operations spec, section 3).

A drill picks a backup (latest, ``--random``, ``--backup ID`` or the newest before a time),
checks it before restoring (manifest, object size against the target's recent backups,
stored sha256, decryption, ``pg_restore --list``, pg_restore's version), restores it into
a fresh database on the staging target with pg_restore carrying on past errors (any error
not on ``[drill] allowed_restore_errors`` fails the drill), compares the restored database
with the facts the manifest took inside pg_dump's own snapshot, runs the smoke queries in
``runbooks/checks/*.sql``, drops the staging database (unless kept), and writes a report.

Phases timed, and what the measured RTO adds up: ``fetch`` (stream and hash the stored
object), ``decrypt`` (decrypt, decompress, check the plain hash, read the TOC), ``restore``
(pg_restore) and ``verify`` (the checks afterwards). Estimated RTO = measured + the
configured allowances. The data-loss window is drill start - the backup's recovery point.

Reports go next to the backups, ``<target>/drills/<drill_id>.json|.md|.html``, and to
``--report-dir``. The verdict is also recorded as a verification of the backup (kind
``drill``), so retention keeps the newest backup that passed one.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from opskit import __version__, catalog, pipeline
from opskit.catalog import Manifest, artifacts
from opskit.config.drill import DrillSettings
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import (
    ConfigError,
    ManifestError,
    ObjectiveBreached,
    ObjectNotFound,
    OpskitError,
    VerificationFailed,
)
from opskit.core.log import get_logger
from opskit.drill import report
from opskit.flyway import version as flyway_version
from opskit.pg import connection, databases, facts, tools
from opskit.pg.archive import TocReader
from opskit.plan import objectives
from opskit.storage.base import Storage, join_key

log = get_logger(__name__)

REPORT_FORMAT = 1
PASS = "pass"
FAIL = "fail"
RECENT_BACKUPS = 10  # how many earlier backups the size check compares with
SIZE_FACTOR = 2.0  # a dump smaller than half or larger than twice the recent range is suspicious

# (staging target, staging database) -> None; tests use it to damage the restored data.
BeforeChecks = Callable[[TargetConfig, str], None]


@dataclass(frozen=True)
class DrillCheck:
    """One check: its phase (``pre``, ``restore``, ``post``), expected and actual, and the verdict."""

    phase: str
    name: str
    ok: bool
    expected: Any
    actual: Any

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "phase": self.phase,
            "name": self.name,
            "ok": self.ok,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass
class PhaseTiming:
    """Start and end of one phase, and the bytes it moved (for throughput)."""

    name: str
    started_at: datetime
    ended_at: datetime
    seconds: float
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form, with throughput in bytes per second when bytes moved."""
        throughput = round(self.bytes / self.seconds) if self.bytes and self.seconds > 0 else None
        return {
            "name": self.name,
            "started_at": catalog.format_time(self.started_at),
            "ended_at": catalog.format_time(self.ended_at),
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "throughput_bytes_per_second": throughput,
        }


@dataclass
class DrillReport:
    """Everything one drill found. ``to_dict()`` is the stored JSON report."""

    drill_id: str
    trigger: str
    target: str
    staging_target: str
    staging_database: str
    started_at: datetime
    finished_at: datetime | None = None
    manifest: Manifest | None = None
    storage: str = ""
    phases: list[PhaseTiming] = field(default_factory=list)
    checks: list[DrillCheck] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    rpo_target: timedelta = timedelta(hours=1)
    rto: objectives.RtoAssessment | None = None
    cleanup: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Return True when there were checks and every one passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        """Return ``pass`` or ``fail`` (the checks only; objectives are reported separately)."""
        return PASS if self.passed else FAIL

    @property
    def data_loss(self) -> timedelta | None:
        """Return drill start - the backup's recovery point."""
        return self.started_at - self.manifest.snapshot_time if self.manifest else None

    @property
    def measured_rto(self) -> timedelta:
        """Return fetch + decrypt + restore + verify wall time."""
        return timedelta(seconds=sum(p.seconds for p in self.phases if p.name in RTO_PHASES))

    @property
    def breaches(self) -> list[str]:
        """Return one sentence per breached objective (data-loss window > RPO, estimated RTO > RTO)."""
        found = []
        loss = self.data_loss
        if loss is not None and objectives.rpo_status(loss, self.rpo_target) == objectives.BREACHED:
            found.append(
                f"RPO breached: the backup's recovery point is {objectives.short(loss)} old, "
                f"target {objectives.short(self.rpo_target)}"
            )
        if self.rto is not None and self.rto.status == objectives.BREACHED:
            found.append(
                f"RTO breached: estimated {objectives.short(self.rto.estimated)} "
                f"(measured {objectives.short(self.rto.measured)} + allowances "
                f"{objectives.short(self.rto.allowances)}), target {objectives.short(self.rto.target)}"
            )
        return found

    @property
    def exit_code(self) -> int:
        """Return 0 when everything passed, 5 when a check failed, 6 when only an objective was breached."""
        if not self.passed:
            return VerificationFailed.exit_code
        if self.breaches:
            return ObjectiveBreached.exit_code
        return 0

    def raise_for_verdict(self) -> None:
        """Raise VerificationFailed (5) for a failed check, ObjectiveBreached (6) for a breach."""
        failed = [c for c in self.checks if not c.ok]
        if failed or not self.checks:
            names = ", ".join(c.name for c in failed) or "no check ran"
            raise VerificationFailed(
                f"drill {self.drill_id} of target '{self.target}' failed: {names}",
                hint="read the drill report" + (f" ({self.reports['markdown']})" if "markdown" in self.reports else ""),
            )
        if self.breaches:
            raise ObjectiveBreached(
                f"drill {self.drill_id} of target '{self.target}' passed its checks, but " + "; ".join(self.breaches),
                hint="back up more often, or restore faster (drill.jobs above 1 on a host with spare cores, a closer storage)",
            )

    def raise_for_outcome(self) -> None:
        """The name every action result shares (the daemon calls it): see :meth:`raise_for_verdict`."""
        self.raise_for_verdict()

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report: every field of the operations spec, section 3."""
        manifest = self.manifest
        db = manifest.artifact(catalog.DUMP_ARTIFACT) if manifest else None
        loss = self.data_loss
        rto = self.rto
        return {
            "format_version": REPORT_FORMAT,
            "kind": "drill",
            "drill_id": self.drill_id,
            "trigger": self.trigger,
            "opskit_version": __version__,
            "target": self.target,
            "backup": {
                "id": manifest.id if manifest else None,
                "storage": self.storage,
                "snapshot_time": catalog.format_time(manifest.snapshot_time) if manifest else None,
                "size": manifest.size if manifest else None,
                "sha256": db.sha256 if db else None,
                "database": manifest.database if manifest else None,
                "migration_version": manifest.migration_version if manifest else None,
            },
            "staging": {"target": self.staging_target, "database": self.staging_database},
            "started_at": catalog.format_time(self.started_at),
            "finished_at": catalog.format_time(self.finished_at) if self.finished_at else None,
            "phases": [p.to_dict() for p in self.phases],
            "checks": [c.to_dict() for c in self.checks],
            "pg_restore_errors": {"allowed": self.allowed_errors, "unexpected": self.unexpected_errors},
            "data_loss_seconds": loss.total_seconds() if loss is not None else None,
            "rpo": {
                "data_loss_seconds": loss.total_seconds() if loss is not None else None,
                "target_seconds": self.rpo_target.total_seconds(),
                "status": objectives.rpo_status(loss, self.rpo_target) if loss is not None else None,
            },
            "rto": {
                "measured_seconds": round(self.measured_rto.total_seconds(), 3),
                "allowances_seconds": rto.allowances.total_seconds() if rto else None,
                "estimated_seconds": round(rto.estimated.total_seconds(), 3) if rto else None,
                "target_seconds": rto.target.total_seconds() if rto else None,
                "status": rto.status if rto else None,
            },
            "verdict": self.verdict,
            "objectives_met": not self.breaches,
            "breaches": self.breaches,
            "warnings": self.warnings,
            "cleanup": self.cleanup,
            "reports": self.reports,
        }


RTO_PHASES = ("fetch", "decrypt", "restore", "verify")


def latest_drill(storage: Storage, target: str) -> dict[str, Any] | None:
    """Return the newest drill report (parsed JSON) of ``target`` in ``storage``, or None.

    Drill ids start with the drill's UTC start time, so the greatest key is the newest.
    Raises StorageError when the storage cannot be listed; a malformed newest report is
    skipped in favour of the one before it.
    """
    prefix = catalog.drills_prefix(target) + "/"
    keys = sorted((info.key for info in storage.list(prefix) if info.key.endswith(".json")), reverse=True)
    for key in keys:
        try:
            data = catalog.read_json(storage, key)
        except (ManifestError, ObjectNotFound):
            continue
        if isinstance(data, dict) and data.get("kind") == "drill":
            return data
    return None


# --------------------------------------------------------------------------- the action


def run(
    ctx: AppContext,
    target: str | None = None,
    backup: str | None = None,
    random_pick: bool = False,
    staging: str | None = None,
    keep: bool = False,
    report_dir: str | Path | None = None,
    trigger: str = "manual",
    before: datetime | None = None,
    database: str | None = None,
    before_checks: BeforeChecks | None = None,
) -> DrillReport:
    """Run one restore drill of ``target`` and return its report (stored before returning).

    ``backup`` names a backup (id or prefix); ``random_pick`` picks any complete one;
    ``before`` picks the newest whose recovery point is earlier; otherwise the latest.
    ``database`` names the staging database (default ``opskit_drill_<target>_<id>``).
    Failed checks and breached objectives are in the report (``report.raise_for_verdict()``
    turns them into exit 5 / 6). Raises ConfigError (2) when no staging target is configured
    or no backup matches, UnreachableError (3) when staging or the storage cannot be reached.
    """
    settings: DrillSettings = ctx.config.drill or DrillSettings()
    source = _source_target(ctx, target)
    staging_target = _staging_target(ctx, source, staging)
    storage_name = source.primary_storage
    store = ctx.storage(storage_name)
    started_at = ctx.clock()
    drill_id = catalog.new_backup_id(started_at)
    db_name = database or staging_database_name(source.name, drill_id)
    result = DrillReport(
        drill_id=drill_id,
        trigger=trigger,
        target=source.name,
        staging_target=staging_target.name,
        staging_database=db_name,
        started_at=started_at,
        storage=storage_name,
        rpo_target=ctx.config.objectives.rpo,
    )
    clock = _PhaseClock(started_at)
    log.info("drill started", target=source.name, drill_id=drill_id, staging=staging_target.name)
    manifest, recent = _pick(ctx, store, source.name, backup, random_pick, before, result)
    if manifest is not None:
        result.manifest = manifest
        if _pre_checks(ctx, store, manifest, recent, staging_target, result, clock):
            restored = _restore(ctx, manifest, storage_name, staging_target, db_name, settings, result, clock)
            if restored:
                if before_checks is not None:
                    before_checks(staging_target, db_name)
                with clock.phase(result, "verify"):
                    _post_checks(ctx, manifest, staging_target, db_name, settings, result)
                _cleanup(staging_target, db_name, keep, settings, result)
            else:
                result.cleanup = {
                    "action": "none",
                    "reason": "the restore failed; opskit dropped what it created",
                }
        else:
            result.cleanup = {
                "action": "none",
                "reason": "nothing was restored (a check before restoring failed)",
            }
    else:
        result.cleanup = {"action": "none", "reason": "no backup was restored"}
    result.rto = objectives.RtoAssessment(
        measured=result.measured_rto,
        allowances=ctx.config.objectives.allowances,
        target=ctx.config.objectives.rto,
    )
    if result.rto.status == objectives.WARN:
        result.warnings.append(
            f"estimated RTO {objectives.short(result.rto.estimated)} is at least 80% of the target "
            f"{objectives.short(result.rto.target)}"
        )
    loss = result.data_loss
    if loss is not None and objectives.rpo_status(loss, result.rpo_target) == objectives.WARN:
        result.warnings.append(f"data-loss window {objectives.short(loss)} is at least 80% of the RPO target")
    result.finished_at = started_at + timedelta(seconds=clock.elapsed())
    _write_reports(ctx, store, result, report_dir or settings.report_dir)
    _record_verdict(store, result)
    log.info(
        "drill finished",
        target=source.name,
        drill_id=drill_id,
        verdict=result.verdict,
        breaches=len(result.breaches),
        measured_rto=round(result.measured_rto.total_seconds(), 2),
    )
    return result


def staging_database_name(target: str, drill_id: str) -> str:
    """Return ``opskit_drill_<target>_<drill id>``, lower-cased, within PostgreSQL's 63-byte limit."""
    suffix = "_" + re.sub(r"[^a-z0-9]", "_", drill_id.lower())
    base = "opskit_drill_" + re.sub(r"[^a-z0-9]", "_", target.lower())
    return base[: 63 - len(suffix)] + suffix


def _source_target(ctx: AppContext, target: str | None) -> TargetConfig:
    """Return the named target; with none named, the only target that is not a staging target."""
    if target is None:
        staging = {t.staging for t in ctx.config.targets.values() if t.staging}
        candidates = [name for name in ctx.config.targets if name not in staging]
        if len(candidates) == 1:
            return ctx.target(candidates[0])
    return ctx.target(target)


def _staging_target(ctx: AppContext, source: TargetConfig, staging: str | None) -> TargetConfig:
    name = staging or source.staging
    if not name:
        raise ConfigError(
            f"target '{source.name}' has no staging target to restore drills into",
            hint=f"set targets.{source.name}.staging to a target name, or pass --staging",
        )
    if name == source.name:
        raise ConfigError("a drill cannot restore into the target it tests", hint="pass another --staging")
    return ctx.target(name)


class _PhaseClock:
    """Times phases on the monotonic clock, stamped relative to the drill's (possibly fake) start."""

    def __init__(self, started_at: datetime) -> None:
        self.started_at = started_at
        self._origin = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._origin

    @contextlib.contextmanager
    def phase(self, result: DrillReport, name: str) -> Any:
        begin = self.elapsed()
        timing = PhaseTiming(name, self.started_at + timedelta(seconds=begin), self.started_at, 0.0)
        try:
            yield timing
        finally:
            end = self.elapsed()
            timing.seconds = end - begin
            timing.ended_at = self.started_at + timedelta(seconds=end)
            result.phases.append(timing)


# --------------------------------------------------------------------------- picking and pre-restore checks


def _pick(
    ctx: AppContext,
    store: Storage,
    target: str,
    backup: str | None,
    random_pick: bool,
    before: datetime | None,
    result: DrillReport,
) -> tuple[Manifest | None, list[Manifest]]:
    """Return (the chosen backup or None when its manifest is unreadable, every readable backup)."""
    bad: list[catalog.BadManifest] = []
    backups = catalog.list_backups(store, target, bad=bad)
    manifest: Manifest | None
    if backup is not None:
        try:
            manifest = catalog.find_backup(store, target, backup)
        except ManifestError as exc:
            result.checks.append(DrillCheck("pre", "manifest readable", False, "a valid manifest", exc.message))
            return None, backups
    elif before is not None:
        earlier = [m for m in backups if m.snapshot_time < before]
        if not earlier:
            raise ConfigError(
                f"target '{target}' has no backup taken before {catalog.format_time(before)} in storage '{store.name}'",
                hint="pick a later time, or look at 'opskit backup list'",
            )
        manifest = earlier[0]
    elif not backups:
        detail = f"; {len(bad)} unreadable manifest(s): {bad[0].error}" if bad else ""
        raise ConfigError(
            f"target '{target}' has no complete backup in storage '{store.name}' to drill{detail}",
            hint="take one with 'opskit backup now'",
        )
    else:
        manifest = random.choice(backups) if random_pick else backups[0]
    result.checks.append(
        DrillCheck(
            "pre",
            "manifest readable",
            True,
            f"format_version {catalog.FORMAT_VERSION}",
            f"format_version {manifest.format_version}, {len(manifest.tables)} tables",
        )
    )
    return manifest, backups


def _pre_checks(
    ctx: AppContext,
    store: Storage,
    manifest: Manifest,
    recent: Sequence[Manifest],
    staging: TargetConfig,
    result: DrillReport,
    clock: _PhaseClock,
) -> bool:
    """Run the checks before restoring; return True when all passed (the restore may go ahead)."""
    artifact = manifest.artifact(catalog.DUMP_ARTIFACT)
    checks = result.checks
    with clock.phase(result, "fetch") as timing:
        try:
            stats = artifacts.hash_stored(store, artifact, cancel=ctx.cancel)
        except ObjectNotFound:
            checks.append(DrillCheck("pre", "object exists", False, artifact.key, "missing"))
            return False
        timing.bytes = stats.size
    checks.append(DrillCheck("pre", "object exists", True, artifact.key, f"{stats.size} bytes"))
    checks.append(_size_check(manifest, stats.size, recent))
    checks.append(DrillCheck("pre", "stored sha256", stats.sha256 == artifact.sha256, artifact.sha256, stats.sha256))
    if not all(c.ok for c in checks):
        return False

    identities: list[Any] = []
    if manifest.encrypted and ctx.config.encryption.identity is not None:
        identities = pipeline.parse_identities(ctx.config.encryption.identity.resolve())
    dump_major = _dump_major(manifest)
    bin_dir = staging.pg_bin_dir or ctx.config.tools.pg_bin_dir
    try:
        tool = tools.find_tool("pg_restore", dump_major, bin_dir)
    except OpskitError as exc:
        checks.append(DrillCheck("pre", "pg_restore major >= dump's", False, dump_major, exc.message))
        return False
    checks.append(
        DrillCheck(
            "pre",
            "pg_restore major >= dump's",
            tool.major >= dump_major,
            f">= {dump_major}",
            f"{tool.version} ({tool.path})",
        )
    )
    with clock.phase(result, "decrypt") as timing:
        try:
            artifacts.check_can_decrypt(artifact, identities, manifest.id)
        except OpskitError as exc:
            checks.append(DrillCheck("pre", "decrypts with the configured identity", False, "decrypts", exc.message))
            return False
        if artifact.encryption:
            checks.append(
                DrillCheck(
                    "pre",
                    "decrypts with the configured identity",
                    True,
                    "decrypts",
                    "identity matches a recipient",
                )
            )
        toc = TocReader(tool.path)
        try:
            with toc:
                read = artifacts.read_artifact(
                    store, artifact, toc, identities=identities, backup_id=manifest.id, cancel=ctx.cancel
                )
        except OpskitError as exc:
            checks.append(
                DrillCheck("pre", "decrypt, decompress and plain sha256", False, artifact.plain_sha256, exc.message)
            )
            return False
        timing.bytes = read.plain.size
    checks.append(
        DrillCheck("pre", "decrypt, decompress and plain sha256", True, artifact.plain_sha256, read.plain.sha256)
    )
    checks.append(
        DrillCheck("pre", "pg_restore --list reads it", toc.readable, "a readable table of contents", toc.describe())
    )
    return all(c.ok for c in checks)


def _size_check(manifest: Manifest, size: int, recent: Sequence[Manifest]) -> DrillCheck:
    """Compare the object's size with the manifest and with the target's recent backups."""
    expected_size = manifest.artifact(catalog.DUMP_ARTIFACT).size
    others = [
        m.artifact(catalog.DUMP_ARTIFACT).size
        for m in recent
        if m.id != manifest.id and any(a.name == catalog.DUMP_ARTIFACT for a in m.artifacts)
    ][:RECENT_BACKUPS]
    if size != expected_size:
        return DrillCheck(
            "pre", "size within recent range", False, f"{expected_size} bytes (manifest)", f"{size} bytes"
        )
    if not others:
        return DrillCheck("pre", "size within recent range", True, "no earlier backup to compare with", f"{size} bytes")
    low, high = min(others) / SIZE_FACTOR, max(others) * SIZE_FACTOR
    return DrillCheck(
        "pre",
        "size within recent range",
        low <= size <= high,
        f"{int(low)}..{int(high)} bytes (recent {min(others)}..{max(others)})",
        f"{size} bytes",
    )


def _dump_major(manifest: Manifest) -> int:
    """Return the lowest pg_restore major that can read the dump: the newer of server and pg_dump."""
    majors = [manifest.server.get("major"), (manifest.tools.get("pg_dump") or {}).get("major")]
    return max((int(m) for m in majors if isinstance(m, int)), default=0)


# --------------------------------------------------------------------------- restore and post-restore checks


def _restore(
    ctx: AppContext,
    manifest: Manifest,
    storage_name: str,
    staging: TargetConfig,
    database: str,
    settings: DrillSettings,
    result: DrillReport,
    clock: _PhaseClock,
) -> bool:
    """Restore into a fresh staging database; return True when there is a database to check."""
    from opskit.restore.restore import restore_to_new_database

    with clock.phase(result, "restore") as timing:
        try:
            restored = restore_to_new_database(
                ctx,
                manifest,
                storage_name,
                staging,
                database,
                jobs=settings.jobs,
                exit_on_error=False,
                no_owner=settings.no_owner,
            )
        except ConfigError:
            raise  # the staging database exists already: the operator must decide, not the drill
        except OpskitError as exc:
            result.checks.append(DrillCheck("restore", "pg_restore completes", False, "exit 0", exc.message))
            return False
        timing.bytes = restored.bytes_restored
    patterns = [re.compile(p) for p in settings.allowed_restore_errors]
    for line in restored.pg_restore_errors:
        (result.allowed_errors if any(p.search(line) for p in patterns) else result.unexpected_errors).append(line)
    result.checks.append(
        DrillCheck(
            "restore",
            "pg_restore errors outside the allow-list",
            not result.unexpected_errors,
            [],
            result.unexpected_errors,
        )
    )
    return True


def _post_checks(
    ctx: AppContext,
    manifest: Manifest,
    staging: TargetConfig,
    database: str,
    settings: DrillSettings,
    result: DrillReport,
) -> None:
    """Compare the restored database with the manifest's facts and run the smoke queries."""
    checks = result.checks
    fingerprinted = [(t.schema, t.name) for t in manifest.tables if t.fingerprint]
    with connection.connect(staging, dbname=database, application_name="opskit drill") as conn:
        tables = facts.list_tables(conn)
        actual = facts.collect(conn, tables=tables, fingerprint_tables=[f"{s}.{n}" for s, n in fingerprinted])
        conn.rollback()  # ends the transaction SET LOCAL needed
        rows = facts.compare_rows(manifest.tables, actual.tables)
        checks.append(
            DrillCheck(
                "post",
                "row counts",
                not rows,
                f"{len(manifest.tables)} tables as in the manifest",
                [f"{m.table}: expected {m.expected}, got {m.actual}" for m in rows]
                or f"{len(actual.tables)} tables match",
            )
        )
        if fingerprinted:
            prints = facts.compare_fingerprints(manifest.tables, actual.tables)
            checks.append(
                DrillCheck(
                    "post",
                    "content fingerprints",
                    not prints,
                    f"{len(fingerprinted)} tables as in the manifest",
                    [f"{m.table}: expected {m.expected}, got {m.actual}" for m in prints]
                    or f"{len(fingerprinted)} tables match",
                )
            )
        if manifest.objects:
            have = {k: actual.objects.get(k) for k in manifest.objects}
            checks.append(
                DrillCheck("post", "object counts", have == dict(manifest.objects), dict(manifest.objects), have)
            )
        invalid = facts.invalid_indexes(conn)
        checks.append(DrillCheck("post", "no invalid indexes", not invalid, [], invalid))
        unvalidated = facts.unvalidated_constraints(conn)
        checks.append(DrillCheck("post", "no unvalidated constraints", not unvalidated, [], unvalidated))
        count, lags = facts.sequence_lags(conn)
        checks.append(
            DrillCheck(
                "post",
                "sequences at or past their columns",
                not lags,
                f"{count} sequences >= max of their column",
                [f"{lag.sequence}: last value {lag.last_value} < {lag.column} max {lag.column_max}" for lag in lags]
                or f"{count} sequences ok",
            )
        )
        version = flyway_version.migration_version(conn)
        failed = flyway_version.failed_migrations(conn)
        checks.append(
            DrillCheck(
                "post",
                "flyway_schema_history at the recorded version, no failed rows",
                version == manifest.migration_version and not failed,
                {"version": manifest.migration_version, "failed": []},
                {"version": version, "failed": failed},
            )
        )
        conn.rollback()
        for path in smoke_queries(ctx, settings):
            checks.append(_smoke(conn, path))


def smoke_queries(ctx: AppContext, settings: DrillSettings) -> list[Path]:
    """Return the ``*.sql`` files of the checks directory (relative to the config file's directory)."""
    directory = Path(settings.checks_dir)
    if not directory.is_absolute() and ctx.config.source is not None:
        directory = ctx.config.source.parent / directory
    return sorted(directory.glob("*.sql")) if directory.is_dir() else []


def _smoke(conn: psycopg.Connection[Any], path: Path) -> DrillCheck:
    """Run one smoke query; it must return exactly one row whose first column is true."""
    name = f"smoke query {path.name}"
    try:
        with conn.cursor() as cur:
            cur.execute(path.read_text(encoding="utf-8"))  # the operator's own SQL, run as written
            rows = cur.fetchall() if cur.description else []
    except (psycopg.Error, OSError) as exc:
        return DrillCheck("post", name, False, "one row, first column true", f"error: {str(exc).strip()}")
    finally:
        conn.rollback()
    ok = len(rows) == 1 and rows[0][0] is True
    actual = f"{len(rows)} row(s)" + (f", first column {rows[0][0]!r}" if rows else "")
    return DrillCheck("post", name, ok, "one row, first column true", actual)


def _cleanup(staging: TargetConfig, database: str, keep: bool, settings: DrillSettings, result: DrillReport) -> None:
    """Drop the staging database unless kept; record what happened."""
    failed = not result.passed
    if keep or (failed and settings.keep_on_failure):
        reason = "--keep" if keep else "keep_on_failure: a check failed"
        result.cleanup = {"action": "kept", "database": database, "reason": reason}
        return
    try:
        databases.drop_database(staging, database)
        result.cleanup = {"action": "dropped", "database": database}
    except (OpskitError, psycopg.Error) as exc:
        message = exc.message if isinstance(exc, OpskitError) else str(exc)
        result.cleanup = {"action": "drop failed", "database": database, "error": message}
        result.warnings.append(f"could not drop staging database '{database}': {message}")


# --------------------------------------------------------------------------- reports


def _write_reports(ctx: AppContext, store: Storage, result: DrillReport, report_dir: str | Path | None) -> None:
    """Store JSON, Markdown and HTML next to the backups, and in ``report_dir`` when given.

    A storage failure here is a warning: the drill's verdict stands and is still printed.
    """
    base = join_key(catalog.drills_prefix(result.target), result.drill_id)
    result.reports = {
        "json": f"{store.name}:{base}.json",
        "markdown": f"{store.name}:{base}.md",
        "html": f"{store.name}:{base}.html",
    }
    directory = Path(report_dir) if report_dir else None
    if directory is not None:
        result.reports["local_dir"] = str(directory)
    data = result.to_dict()
    rendered = {
        "json": report.to_json(data),
        "md": report.to_markdown(data).encode("utf-8"),
        "html": report.to_html(data).encode("utf-8"),
    }
    try:
        for ext, payload in rendered.items():
            with store.writer(f"{base}.{ext}") as out:
                out.write(payload)
    except OpskitError as exc:
        result.warnings.append(f"storing the drill report in '{store.name}' failed: {exc.message}")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for ext, payload in rendered.items():
            (directory / f"{result.drill_id}.{ext}").write_bytes(payload)


def _record_verdict(store: Storage, result: DrillReport) -> None:
    """Record the drill as a verification of the backup, so retention keeps the newest drilled backup."""
    if result.manifest is None:
        return
    try:
        from opskit.backup import verify
    except ImportError:  # pragma: no cover - verify ships in the same package
        return
    checks = tuple(verify.Check("db", c.name, _plain(c.expected), _plain(c.actual), c.ok) for c in result.checks)
    record = verify.Verification(
        target=result.target,
        backup_id=result.manifest.id,
        storage=store.name,
        time=result.started_at,
        kind="drill",
        level="restore",
        verdict=result.verdict,
        checks=checks,
    )
    try:
        verify.record_verification(store, record)
    except OpskitError as exc:
        result.warnings.append(f"recording the drill verdict next to the backup failed: {exc.message}")


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
