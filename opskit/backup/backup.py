"""``opskit backup now``: a consistent pg_dump, streamed into storage, committed by its manifest.

Order of work, and why:

1. Preflight, before anything is written: connect, read the server's facts, choose a
   pg_dump/pg_dumpall at least as new as the server, take the target's backup lock
   (exit 7 if another run holds it), check the primary storage is writable (exit 3).
2. Export a snapshot from a ``REPEATABLE READ READ ONLY`` transaction. pg_dump dumps that
   snapshot, and the row counts and schema version recorded in the manifest are read
   inside the same snapshot (in a thread, while pg_dump streams), so they describe exactly
   what the dump holds.
3. Stream ``pg_dump -Fc -Z0`` through sha256 -> zstd -> [age] -> sha256 into the storage;
   pg_dump's exit status is checked *before* the object is committed, so a failed dump
   leaves nothing visible. Then ``pg_dumpall --globals-only`` the same way.
4. Re-read every artifact's existence and size, then write ``manifest.json`` last: until it
   exists, the backup does not. From before the first artifact until the manifest, the run
   holds a shared repository lock (``catalog.locks``) naming its backup id.
5. Copy to each secondary storage; a failed copy is reported but does not undo the backup.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from opskit import __version__, catalog
from opskit.backup import stream
from opskit.catalog import Manifest, artifact_key, new_backup_id, write_manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, ConfigError, CopyFailed, LockHeld, OpskitError
from opskit.core.log import get_logger
from opskit.pg import commands, connection, databases, facts, locks, tools
from opskit.pipeline import parse_recipients, recipient_fingerprint
from opskit.storage.base import Storage

log = get_logger(__name__)


@dataclass
class BackupResult:
    """A committed backup, where it is, and how each secondary copy went (None = copied)."""

    manifest: Manifest
    storage: str
    copies: dict[str, str | None] = field(default_factory=dict)

    @property
    def failed_copies(self) -> dict[str, str]:
        """Return storage name -> error for the copies that failed."""
        return {name: error for name, error in self.copies.items() if error is not None}

    def raise_for_outcome(self) -> None:
        """Raise CopyFailed (exit 4) when the backup is committed but a secondary copy failed."""
        if self.failed_copies:
            names = ", ".join(f"'{name}'" for name in sorted(self.failed_copies))
            raise CopyFailed(
                f"backup {self.manifest.id} ok, copy to {names} failed: {'; '.join(self.failed_copies.values())}",
                hint="the next 'opskit copy' retries it",
            )


def lock_key(target: str) -> int:
    """Return the advisory lock key that serialises backups of one target (a signed 64-bit int)."""
    digest = hashlib.sha256(f"opskit-backup:{target}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def backup_targets(ctx: AppContext) -> list[str]:
    """Return the targets ``--all`` backs up: every target that is not another target's staging."""
    staging = {t.staging for t in ctx.config.targets.values() if t.staging}
    return [name for name in ctx.config.targets if name not in staging]


def run(
    ctx: AppContext,
    target: str | None = None,
    labels: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> BackupResult:
    """Take one backup of ``target`` and return it once its manifest is committed.

    Raises UnreachableError (3) in preflight, LockHeld (7) when another backup of the target
    runs, BackupFailed (4) when pg_dump or the upload fails (nothing is left visible).
    """
    target_config = ctx.target(target)
    if target_config.is_server:
        # Its dsn names only the database discovery connects to (backup/server.py backs up the rest).
        raise ConfigError(
            f"target '{target_config.name}' is a server target: back it up through 'opskit backup now'",
            hint=f"or name one database as --target {target_config.name}.<database>",
        )
    started = time.monotonic()
    with _Preflight(ctx, target_config) as pre:
        storage = ctx.storage(target_config.primary_storage)
        storage.check_writable()
        snapshot_id, snapshot_time = pre.export_snapshot()
        backup_id = new_backup_id(snapshot_time)
        log.info("backup started", target=target_config.name, backup_id=backup_id, storage=storage.name)
        # The repository lock (shared) is taken before the first artifact is written, so a
        # prune (exclusive) either runs before this backup or exits 7 while it runs, and its
        # sweep never mistakes this run's committed dump for a leftover.
        with catalog.locked(storage, target_config.name, "backup", clock=ctx.clock, backup_id=backup_id):
            try:
                manifest = _dump_and_commit(
                    ctx, target_config, storage, pre, snapshot_id, snapshot_time, backup_id, labels, extra or {}
                )
            except BaseException:
                stream.remove_partial_backup(storage, target_config.name, backup_id)
                raise
    copies = stream.copy_to_secondaries(ctx, manifest, storage, target_config.storages[1:])
    result = BackupResult(manifest=manifest, storage=storage.name, copies=copies)
    log.info(
        "backup committed",
        target=target_config.name,
        backup_id=manifest.id,
        size=manifest.size,
        duration_seconds=round(time.monotonic() - started, 2),
        failed_copies=sorted(result.failed_copies),
    )
    return result


class _Preflight:
    """Connection, server facts, tools and the backup lock for one run; released on exit."""

    def __init__(self, ctx: AppContext, target: TargetConfig) -> None:
        self.ctx = ctx
        self.target = target
        self.conn = connection.connect(target, autocommit=True, application_name="opskit backup")
        try:
            self.server = connection.server_facts(self.conn)
            self.identity = databases.database_identity(self.conn)
            bin_dir = target.pg_bin_dir or ctx.config.tools.pg_bin_dir
            self.pg_dump = tools.find_tool("pg_dump", self.server.major, bin_dir)
            self.pg_dumpall = tools.find_tool("pg_dumpall", self.server.major, bin_dir)
            # Checked before anything is written: a state_dir that cannot hold the password file,
            # or a malformed age recipient, is a configuration error (exit 2), not a failure after
            # the lock with pg_dump running.
            self.state_dir = ctx.password_state_dir(target)
            parse_recipients(ctx.config.encryption.recipients)
            self._lock()
        except BaseException:
            self.conn.close()
            raise

    def _lock(self) -> None:
        if not locks.try_lock(self.conn, lock_key(self.target.name), session=True):
            raise LockHeld(
                f"another backup of target '{self.target.name}' is running (its lock is held)",
                hint="wait for it to finish; this run changed nothing",
            )

    def export_snapshot(self) -> tuple[str, datetime]:
        """Open the snapshot transaction and return (snapshot id, snapshot time)."""
        with self.conn.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            # The snapshot is taken by the first statement; its timestamp is the recovery point.
            cur.execute("SELECT pg_export_snapshot(), statement_timestamp()")
            row = cur.fetchone()
        assert row is not None
        return str(row[0]), row[1]

    def __enter__(self) -> _Preflight:
        return self

    def __exit__(self, *exc: object) -> None:
        # End the snapshot transaction and release the lock explicitly: closing alone releases it
        # only when the server backend exits, after the client has moved on, so a backup started
        # right after this one could still find the lock held.
        try:
            self.conn.execute("ROLLBACK")
            locks.release_all(self.conn)
        except psycopg.Error:
            pass  # the session is gone, and its lock with it
        finally:
            self.conn.close()


class _FactsThread(threading.Thread):
    """Collects row counts, fingerprints and the schema version inside pg_dump's snapshot while it streams.

    It works on its own connection that imports the exported snapshot: an error here (a
    table the role may not read) aborts only this connection's transaction, never the
    exporting one that pg_dump still needs.
    """

    def __init__(self, target: TargetConfig, snapshot_id: str) -> None:
        super().__init__(name="opskit-facts", daemon=True)
        self.target = target
        self.snapshot_id = snapshot_id
        self.result: facts.SnapshotFacts | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            # Imported here, beside pg_dump's stream, not before pg_dump starts (~20 ms of start-up).
            from opskit.flyway import version as flyway_version

            with connection.connect(self.target, autocommit=True, application_name="opskit backup facts") as conn:

                def begin() -> None:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot_id)))

                def restart() -> None:
                    # A new transaction on the same snapshot (importable while the exporting one is
                    # open, which it is until the manifest): the locks of the tables counted so far
                    # are released, so thousands of tables do not run the server's lock table out.
                    conn.execute("ROLLBACK")
                    begin()

                begin()
                self.result = facts.collect(
                    conn,
                    fingerprint_tables=self.target.fingerprint_tables,
                    fingerprint_max_bytes=self.target.fingerprint_max_bytes,
                    restart=restart,
                )
                self.result.migration_version = flyway_version.migration_version(conn)
                conn.execute("ROLLBACK")
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        self.seconds = time.monotonic() - started

    def facts(self) -> facts.SnapshotFacts:
        """Wait for the collection and return it; raise BackupFailed if it failed."""
        self.join()
        if self.error is not None or self.result is None:
            cause = connection.server_cause(self.error) if self.error is not None else None
            raise BackupFailed(
                f"reading row counts inside pg_dump's snapshot failed: {cause or self.error}",
                hint="nothing was committed; "
                + (
                    "the dsn's options set that timeout: remove it or raise it"
                    if cause
                    else "the role needs SELECT on every table it backs up"
                ),
            ) from self.error
        return self.result


def _dump_and_commit(
    ctx: AppContext,
    target: TargetConfig,
    storage: Storage,
    pre: _Preflight,
    snapshot_id: str,
    snapshot_time: datetime,
    backup_id: str,
    labels: Sequence[str],
    extra: Mapping[str, Any],
) -> Manifest:
    started_at = ctx.clock()
    recipients = ctx.config.encryption.recipients
    encryption = {"format": "age", "recipients": [recipient_fingerprint(r) for r in recipients]} if recipients else None
    facts_thread = _FactsThread(target, snapshot_id)
    facts_thread.start()
    phases: dict[str, float] = {}
    # Not ctx.state_dir, which creates the folder: a backup without a password needs none, so a
    # state_dir that cannot be created (the default ./.opskit-state under a read-only working
    # directory: a cron job in /, a container's read-only root) must not fail it with exit 1.
    with connection.password_env(target, pre.state_dir) as env:
        dump_argv = commands.pg_dump_argv(pre.pg_dump, target, snapshot=snapshot_id)
        phase_start = time.monotonic()
        dump = stream.store_tool_output(
            ctx,
            target,
            storage,
            dump_argv,
            env,
            artifact_key(target.name, backup_id, "db", bool(recipients)),
            label=f"backup {target.name}",
            program="pg_dump",
        )
        phases["dump"] = time.monotonic() - phase_start
        snapshot_facts = facts_thread.facts()
        globals_argv = commands.pg_dumpall_globals_argv(
            pre.pg_dumpall, target, database=pre.server.database, superuser=pre.server.is_superuser
        )
        phase_start = time.monotonic()
        globals_result = stream.store_tool_output(
            ctx,
            target,
            storage,
            globals_argv,
            env,
            artifact_key(target.name, backup_id, "globals", bool(recipients)),
            label=f"globals {target.name}",
            program="pg_dumpall",
        )
        phases["globals"] = time.monotonic() - phase_start
    phases["facts"] = facts_thread.seconds
    level = ctx.config.compression.level
    artifacts = (
        stream.artifact("db", artifact_key(target.name, backup_id, "db", bool(recipients)), dump, encryption),
        stream.artifact(
            "globals", artifact_key(target.name, backup_id, "globals", bool(recipients)), globals_result, encryption
        ),
    )
    # The database's encoding and locale: a restore creates its new database with the same.
    server = pre.server.to_dict() | {"host": connection.describe(target), "identity": pre.identity.to_dict()}
    manifest = Manifest(
        id=backup_id,
        target=target.name,
        opskit_version=__version__,
        snapshot_time=snapshot_time,
        started_at=started_at,
        finished_at=ctx.clock(),
        server=server,
        tools={
            "pg_dump": {
                "path": pre.pg_dump.path,
                "version": pre.pg_dump.version,
                "major": pre.pg_dump.major,
                "argv": commands.without_connection(dump_argv),
            },
            "pg_dumpall": {
                "path": pre.pg_dumpall.path,
                "version": pre.pg_dumpall.version,
                "major": pre.pg_dumpall.major,
            },
            "zstd": {"level": level, "library": f"python-zstandard {zstandard.__version__}"},
        },
        artifacts=artifacts,
        tables=tuple(snapshot_facts.tables),
        row_counts=facts.ROW_COUNTS_ONLY,  # facts.collect counts each table's own rows
        labels=tuple(labels),
        migration_version=snapshot_facts.migration_version,
        objects=snapshot_facts.objects,
        # cpu: where the database dump's CPU went, per pipeline stage (docs/benchmarks.md).
        extra=dict(extra)
        | {"phases": {k: round(v, 3) for k, v in phases.items()}, "cpu": dump.cpu, "storage": storage.name},
    )
    if ctx.cancel.is_set():
        raise BackupFailed("the run was cancelled (shutdown requested) before its manifest was written")
    catalog.check_artifacts_stored(storage, manifest)
    write_manifest(storage, manifest)
    return manifest


def run_all(ctx: AppContext, labels: Sequence[str] = ()) -> tuple[list[BackupResult], dict[str, OpskitError]]:
    """Back up every target ``--all`` covers; carry on past failures and return (results, errors by target)."""
    results: list[BackupResult] = []
    errors: dict[str, OpskitError] = {}
    names = backup_targets(ctx)
    if not names:
        raise ConfigError("no targets to back up")
    for name in names:
        try:
            results.append(run(ctx, target=name, labels=labels))
        except OpskitError as exc:
            log.error("backup failed", target=name, error=exc.one_line())
            errors[name] = exc
    return results, errors
