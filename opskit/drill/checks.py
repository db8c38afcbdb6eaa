"""The checks a drill runs before restoring (``PRE_CHECKS``) and after (``POST_CHECKS``).

Each check is a function ``(context) -> list[Check]``; the drill runs the lists in order.
Adding a check is one function and one entry in its list. A check's ``subject`` is its phase
(``pre``, ``post``); names, expected and actual values are what the drill report shows.

A failed pre-check stops the pre-checks (and the drill restores nothing): there is no point
decrypting an object whose stored hash is already wrong. Post-checks all run, on one
connection to the restored database; an error of the database itself propagates.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from opskit import catalog
from opskit.catalog import Check, Manifest
from opskit.config.drill import SIZE_JUMP_FAIL, DrillSettings
from opskit.context import AppContext
from opskit.core.errors import ObjectNotFound, OpskitError
from opskit.drill.timing import PhaseClock, PhaseTiming
from opskit.flyway import version as flyway_version
from opskit.pg import facts
from opskit.pg.archive import TocReader
from opskit.restore.reader import OpenedBackup

PRE = "pre"
POST = "post"


@dataclass
class PreCheckContext:
    """What the checks before restoring look at: the opened backup, the target's recent backups, the clock.

    ``warnings`` collects what a check found odd without failing (the drill report shows them).
    """

    backup: OpenedBackup
    recent: Sequence[Manifest]
    clock: PhaseClock
    phases: list[PhaseTiming]
    settings: DrillSettings = field(default_factory=DrillSettings)
    warnings: list[str] = field(default_factory=list)

    @property
    def manifest(self) -> Manifest:
        """Return the manifest of the backup under test."""
        return self.backup.manifest


@dataclass
class PostCheckContext:
    """What the checks after restoring look at: one open connection to the restored database and its facts."""

    ctx: AppContext
    settings: DrillSettings
    manifest: Manifest
    conn: psycopg.Connection[Any]
    actual: facts.SnapshotFacts
    fingerprinted: list[tuple[str, str]] = field(default_factory=list)


PreCheck = Callable[[PreCheckContext], list[Check]]
PostCheck = Callable[[PostCheckContext], list[Check]]


# --------------------------------------------------------------------------- before restoring


def stored_object(context: PreCheckContext) -> list[Check]:
    """Stream the stored object (phase ``fetch``): it exists, its size is plausible, its sha256 matches."""
    manifest = context.manifest
    artifact = manifest.artifact(catalog.DUMP_ARTIFACT)
    with context.clock.phase(context.phases, "fetch") as timing:
        try:
            stats = context.backup.hash_stored()
        except ObjectNotFound:
            return [Check(PRE, "object exists", artifact.key, "missing", False)]
        timing.bytes = stats.size
    return [
        Check(PRE, "object exists", artifact.key, f"{stats.size} bytes", True),
        _size_check(context, stats.size),
        Check(PRE, "stored sha256", artifact.sha256, stats.sha256, stats.sha256 == artifact.sha256),
    ]


@dataclass(frozen=True)
class SizeRange:
    """The sizes a backup may have to count as normal, from the sizes of the target's recent backups."""

    low: int
    high: int
    median: float
    spread: float  # median absolute deviation
    count: int  # how many backups the range is computed from

    def describe(self) -> str:
        """Return ``low..high bytes (median M, spread S of the last N backups)``."""
        return (
            f"{self.low}..{self.high} bytes (median {int(self.median)}, spread {int(self.spread)} "
            f"of the last {self.count} backups)"
        )


def size_range(sizes: Sequence[int], settings: DrillSettings) -> SizeRange:
    """Return the normal range of a dump's size given the ``sizes`` of earlier dumps (at least one).

    The centre is their median, so one odd backup moves it little. The range is the wider of
    ``median / size_factor .. median * size_factor`` and ``median +- size_spread`` median
    absolute deviations: a database that grows at a steady pace widens its own range, and one
    whose backups were all the same size may still grow by ``size_factor``.
    """
    centre = statistics.median(sizes)
    spread = statistics.median(abs(s - centre) for s in sizes)
    low = min(centre / settings.size_factor, centre - settings.size_spread * spread)
    high = max(centre * settings.size_factor, centre + settings.size_spread * spread)
    return SizeRange(max(int(low), 0), int(high), centre, spread, len(sizes))


def _size_check(context: PreCheckContext, size: int) -> Check:
    """Compare the object's size with the manifest (must match) and with the target's recent backups.

    A size outside the recent range fails the check only with ``[drill] size_jump = "fail"``;
    by default it passes with a warning in ``context.warnings`` (a data load is not a broken backup,
    and the checksums and the restore that follow say whether the backup is good).
    """
    manifest, settings = context.manifest, context.settings
    expected_size = manifest.artifact(catalog.DUMP_ARTIFACT).size
    earlier = [
        m.artifact(catalog.DUMP_ARTIFACT).size
        for m in sorted(context.recent, key=lambda m: m.snapshot_time, reverse=True)
        if m.id != manifest.id
        and m.snapshot_time < manifest.snapshot_time
        and any(a.name == catalog.DUMP_ARTIFACT for a in m.artifacts)
    ][: settings.size_window]
    name = "size within recent range"
    if size != expected_size:
        return Check(PRE, name, f"{expected_size} bytes (manifest)", f"{size} bytes", False)
    if not earlier:
        return Check(PRE, name, "no earlier backup to compare with", f"{size} bytes", True)
    normal = size_range(earlier, settings)
    if normal.low <= size <= normal.high:
        return Check(PRE, name, normal.describe(), f"{size} bytes", True)
    if settings.size_jump == SIZE_JUMP_FAIL:
        return Check(PRE, name, normal.describe(), f"{size} bytes", False)
    context.warnings.append(
        f"size jump: the dump is {size} bytes, outside the recent range {normal.describe()}; "
        'the drill went on (set [drill] size_jump = "fail" to fail it)'
    )
    return Check(PRE, name, normal.describe(), f"{size} bytes (outside the range: a warning)", True)


def pg_restore_version(context: PreCheckContext) -> list[Check]:
    """A pg_restore whose major is at least the dump's is installed on the staging side."""
    name = "pg_restore major >= dump's"
    dump_major = context.backup.dump_major
    try:
        tool = context.backup.pg_restore()
    except OpskitError as exc:
        return [Check(PRE, name, dump_major, exc.message, False)]
    return [Check(PRE, name, f">= {dump_major}", f"{tool.version} ({tool.path})", tool.major >= dump_major)]


def decrypts_and_lists(context: PreCheckContext) -> list[Check]:
    """Decrypt and decompress the whole object (phase ``decrypt``): plain sha256, then ``pg_restore --list``.

    Raises ConfigError when the backup is encrypted and the configured identity cannot be
    resolved (a configuration problem, not a property of the backup).
    """
    backup = context.backup
    artifact = context.manifest.artifact(catalog.DUMP_ARTIFACT)
    checks: list[Check] = []
    with context.clock.phase(context.phases, "decrypt") as timing:
        backup.identities  # noqa: B018 - resolve the identity here, so its failure is not a check's
        try:
            backup.check_can_decrypt()
        except OpskitError as exc:
            return [Check(PRE, "decrypts with the configured identity", "decrypts", exc.message, False)]
        if artifact.encryption:
            checks.append(
                Check(PRE, "decrypts with the configured identity", "decrypts", "identity matches a recipient", True)
            )
        toc = TocReader(backup.pg_restore())
        try:
            with toc:
                read = backup.read(catalog.DUMP_ARTIFACT, toc)
        except OpskitError as exc:
            checks.append(Check(PRE, "decrypt, decompress and plain sha256", artifact.plain_sha256, exc.message, False))
            return checks
        timing.bytes = read.plain.size
    checks.append(Check(PRE, "decrypt, decompress and plain sha256", artifact.plain_sha256, read.plain.sha256, True))
    checks.append(
        Check(PRE, "pg_restore --list reads it", "a readable table of contents", toc.describe(), toc.readable)
    )
    return checks


PRE_CHECKS: list[PreCheck] = [stored_object, pg_restore_version, decrypts_and_lists]


def run_pre_checks(context: PreCheckContext, checks: list[Check]) -> bool:
    """Run ``PRE_CHECKS`` in order, appending to ``checks``; stop at the first that fails.

    Returns True when every check passed (the restore may go ahead).
    """
    return run_pre_checks_of(context, PRE_CHECKS, checks)


def run_pre_checks_of(context: PreCheckContext, pre_checks: Sequence[PreCheck], checks: list[Check]) -> bool:
    """Run ``pre_checks`` in order, appending to ``checks``; stop at the first that fails.

    Returns True when every check passed. A PITR drill runs only :func:`stored_object` (its
    extract decodes the stream, and no pg_restore reads a tar).
    """
    for pre_check in pre_checks:
        found = pre_check(context)
        checks.extend(found)
        if not all(c.ok for c in found):
            return False
    return all(c.ok for c in checks)


# --------------------------------------------------------------------------- after restoring


def _mismatch_lines(mismatches: Sequence[facts.RowMismatch | facts.FingerprintMismatch]) -> list[str]:
    return [f"{m.table}: expected {m.expected}, got {m.actual}" for m in mismatches]


def row_counts(context: PostCheckContext) -> list[Check]:
    """Every table holds as many rows as the manifest counted inside pg_dump's snapshot."""
    manifest, actual = context.manifest, context.actual
    rows = facts.compare_rows(manifest.tables, actual.tables)
    return [
        Check(
            POST,
            "row counts",
            f"{len(manifest.tables)} tables as in the manifest",
            _mismatch_lines(rows) or f"{len(actual.tables)} tables match",
            not rows,
        )
    ]


def content_fingerprints(context: PostCheckContext) -> list[Check]:
    """The fingerprinted tables' contents hash as in the manifest (no check when none was fingerprinted)."""
    if not context.fingerprinted:
        return []
    prints = facts.compare_fingerprints(context.manifest.tables, context.actual.tables)
    count = len(context.fingerprinted)
    return [
        Check(
            POST,
            "content fingerprints",
            f"{count} tables as in the manifest",
            _mismatch_lines(prints) or f"{count} tables match",
            not prints,
        )
    ]


def object_counts(context: PostCheckContext) -> list[Check]:
    """The counts of each kind of object (views, functions, ...) are as in the manifest, when it has them."""
    wanted = dict(context.manifest.objects)
    if not wanted:
        return []
    have = {k: context.actual.objects.get(k) for k in wanted}
    return [Check(POST, "object counts", wanted, have, have == wanted)]


def no_invalid_indexes(context: PostCheckContext) -> list[Check]:
    """Every index was built (none left invalid by a failed CREATE INDEX)."""
    invalid = facts.invalid_indexes(context.conn)
    return [Check(POST, "no invalid indexes", [], invalid, not invalid)]


def no_unvalidated_constraints(context: PostCheckContext) -> list[Check]:
    """Every constraint is validated (none left NOT VALID)."""
    unvalidated = facts.unvalidated_constraints(context.conn)
    return [Check(POST, "no unvalidated constraints", [], unvalidated, not unvalidated)]


def sequences_at_columns(context: PostCheckContext) -> list[Check]:
    """Every sequence is at or past the maximum of the column it feeds (the next insert will not collide)."""
    count, lags = facts.sequence_lags(context.conn)
    return [
        Check(
            POST,
            "sequences at or past their columns",
            f"{count} sequences >= max of their column",
            [f"{lag.sequence}: last value {lag.last_value} < {lag.column} max {lag.column_max}" for lag in lags]
            or f"{count} sequences ok",
            not lags,
        )
    ]


def migration_history(context: PostCheckContext) -> list[Check]:
    """``flyway_schema_history`` is at the version the manifest recorded, with no failed migration."""
    version = flyway_version.migration_version(context.conn)
    failed = flyway_version.failed_migrations(context.conn)
    recorded = context.manifest.migration_version
    return [
        Check(
            POST,
            "flyway_schema_history at the recorded version, no failed rows",
            {"version": recorded, "failed": []},
            {"version": version, "failed": failed},
            version == recorded and not failed,
        )
    ]


def failed_migrations(context: PostCheckContext) -> list[Check]:
    """``flyway_schema_history`` has no failed row (no check when the database has no history table).

    The PITR drill's form of :func:`migration_history`: the moment recovered is later than the
    base backup, so the version it recorded need not match.
    """
    if flyway_version.history_schema(context.conn) is None:
        return []
    failed = flyway_version.failed_migrations(context.conn)
    return [Check(POST, "flyway_schema_history has no failed rows", [], failed, not failed)]


def smoke_queries(ctx: AppContext, settings: DrillSettings) -> list[Path]:
    """Return the ``*.sql`` files of the checks directory (relative to the config file's directory)."""
    directory = Path(settings.checks_dir)
    if not directory.is_absolute() and ctx.config.source is not None:
        directory = ctx.config.source.parent / directory
    return sorted(directory.glob("*.sql")) if directory.is_dir() else []


def smoke_query_checks(context: PostCheckContext) -> list[Check]:
    """Run each operator's smoke query (``runbooks/checks/*.sql``) in its own transaction, in name order."""
    context.conn.rollback()
    return [_smoke(context.conn, path) for path in smoke_queries(context.ctx, context.settings)]


def _smoke(conn: psycopg.Connection[Any], path: Path) -> Check:
    """Run one smoke query; it must return exactly one row whose first column is true."""
    name = f"smoke query {path.name}"
    expected = "one row, first column true"
    try:
        with conn.cursor() as cur:
            cur.execute(path.read_text(encoding="utf-8"))  # the operator's own SQL, run as written
            rows = cur.fetchall() if cur.description else []
    except (psycopg.Error, OSError) as exc:
        return Check(POST, name, expected, f"error: {str(exc).strip()}", False)
    finally:
        conn.rollback()
    ok = len(rows) == 1 and rows[0][0] is True
    actual = f"{len(rows)} row(s)" + (f", first column {rows[0][0]!r}" if rows else "")
    return Check(POST, name, expected, actual, ok)


POST_CHECKS: list[PostCheck] = [
    row_counts,
    content_fingerprints,
    object_counts,
    no_invalid_indexes,
    no_unvalidated_constraints,
    sequences_at_columns,
    migration_history,
    smoke_query_checks,
]


# The checks that hold for a physical copy recovered to a moment: a base backup counts no rows.
PITR_POST_CHECKS: list[PostCheck] = [
    no_invalid_indexes,
    no_unvalidated_constraints,
    sequences_at_columns,
    failed_migrations,
    smoke_query_checks,
]


def run_post_checks(
    ctx: AppContext, settings: DrillSettings, manifest: Manifest, conn: psycopg.Connection[Any], checks: list[Check]
) -> None:
    """Read the restored database's facts on ``conn``, then run ``POST_CHECKS`` in order, appending to ``checks``.

    Raises psycopg.Error when the restored database cannot be queried.
    """
    fingerprinted = [(t.schema, t.name) for t in manifest.tables if t.fingerprint]
    tables = facts.list_tables(conn)
    actual = facts.collect(
        conn,
        tables=tables,
        fingerprint_tables=[f"{s}.{n}" for s, n in fingerprinted],
        inclusive=manifest.counts_children,  # like with like: an old manifest counted children too
        # The restored copy does not change: a commit every few tables (each fingerprint's SET
        # LOCAL stays inside one) keeps the locks of thousands of tables from running the
        # staging server's lock table out.
        restart=conn.commit,
    )
    conn.rollback()  # ends the transaction SET LOCAL needed
    context = PostCheckContext(ctx, settings, manifest, conn, actual, fingerprinted)
    for post_check in POST_CHECKS:
        checks.extend(post_check(context))
