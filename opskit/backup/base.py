"""``opskit backup now --kind base``: a pg_basebackup tar stream, the base of point-in-time recovery.

Order of work, as for a logical backup (:mod:`opskit.backup.backup`):

1. Preflight: connect, read the server's facts, refuse a cluster with extra tablespaces
   (``-Ft -D -`` streams one tar: the per-tablespace tars are not handled yet), choose a
   pg_basebackup at least as new as the server, check that ``tools.state_dir`` can hold the
   password file when there is a password (exit 2), take the target's backup lock (exit 7),
   check the primary storage is writable (exit 3).
2. Stream ``pg_basebackup -Ft -D - -X none --checkpoint=fast`` through sha256 -> zstd ->
   [age] -> sha256 into ``<target>/<id>/base.tar.zst[.age]`` (the manifest's ``db``
   artifact, so every catalog path that expects one finds it); ``backup_label`` and
   ``backup_manifest`` are picked out of the stream on the way. pg_basebackup's exit status
   is checked before the object is committed.
3. Store PostgreSQL's ``backup_manifest`` as its own artifact, then write ``manifest.json``
   last (``kind = "base"``, with the timeline, start/stop LSN and time, the first and last
   WAL segment the backup needs, and the system identifier), under the shared repository lock.

With ``-X none`` the WAL comes from the archive (``opskit wal push`` as archive_command, or
``opskit wal stream``): the server's stop of the backup waits until the last segment it
needs is archived, so a committed base backup is restorable as soon as it is listed.

That wait has no end of its own while archive_command fails, and pg_basebackup prints nothing
during it. A watcher (:class:`ArchiveWait`) polls the backup's walsender on the run's regular
connection (``wait_event = 'BackupWaitWalArchive'``) and says so on stderr every 30 s, with
``pg_stat_archiver``'s figures; after ``wal.archive_wait_timeout`` (default 10 min) it ends the
walsender, pg_basebackup exits, and the run fails with exit 4, nothing committed. Any
walsender of the run still there when it fails (a kill, a cancel) is ended too: a walsender
waiting for the archive does not notice its client is gone.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg.conninfo import make_conninfo

from opskit import __version__, catalog
from opskit.backup import stream
from opskit.backup.backup import BackupResult, lock_key
from opskit.backup.tarscan import TarMemberCapture
from opskit.catalog import Manifest, backup_prefix, new_backup_id, write_manifest
from opskit.config.model import TargetConfig
from opskit.config.wal import WalSettings
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, ConfigError, LockHeld
from opskit.core.log import get_logger
from opskit.core.units import format_duration
from opskit.pg import commands, connection, locks, tools
from opskit.pipeline import StoreResult, compress_and_store, parse_recipients, recipient_fingerprint
from opskit.storage.base import Storage, join_key
from opskit.wal import layout

log = get_logger(__name__)

KIND = "base"
TAR_ARTIFACT = "db"  # the name every backup's main artifact has (the catalog requires one)
BACKUP_MANIFEST_ARTIFACT = "backup_manifest"
_LABEL_RE = re.compile(r"^START (WAL LOCATION|TIME|TIMELINE): (.*?)\s*$", re.MULTILINE)
WAIT_POLL_SECONDS = 1.0  # how often the watcher looks at the walsender (one small query)
WAIT_SAY_SECONDS = 30.0  # how often a wait for the archive is said on stderr


def tar_key(target: str, backup_id: str, encrypted: bool) -> str:
    """Return the key of a base backup's tar stream: ``<target>/<id>/base.tar.zst[.age]``."""
    return join_key(backup_prefix(target, backup_id), "base.tar.zst" + (".age" if encrypted else ""))


def backup_manifest_key(target: str, backup_id: str, encrypted: bool) -> str:
    """Return the key of PostgreSQL's own ``backup_manifest`` kept beside the tar."""
    return join_key(backup_prefix(target, backup_id), "backup_manifest.zst" + (".age" if encrypted else ""))


def run(
    ctx: AppContext,
    target: str | None = None,
    labels: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> BackupResult:
    """Take one base backup of ``target``'s cluster and return it once its manifest is committed.

    Raises ConfigError (2) for a cluster with several tablespaces or, with a password, a
    ``tools.state_dir`` that cannot hold its password file (before the lock), UnreachableError
    (3) in preflight, LockHeld (7) when another backup of the target runs, BackupFailed (4) when
    pg_basebackup or the upload fails, or the server has not archived the backup's last WAL
    segment within ``wal.archive_wait_timeout`` (nothing is left visible).
    """
    target_config = ctx.target(target)
    started = time.monotonic()
    conn = connection.connect(target_config, autocommit=True, application_name="opskit base backup")
    try:
        server = connection.server_facts(conn)
        segment_size = _preflight(conn, target_config)
        bin_dir = target_config.pg_bin_dir or ctx.config.tools.pg_bin_dir
        tool = tools.find_tool("pg_basebackup", server.major, bin_dir)
        # Checked before the lock and the first object: a state_dir that cannot hold the password
        # file is a configuration error (exit 2); without a password none is needed or created.
        state_dir = ctx.password_state_dir(target_config)
        parse_recipients(ctx.config.encryption.recipients)  # a malformed key: exit 2 before the lock, not mid-stream
        if not locks.try_lock(conn, lock_key(target_config.name), session=True):
            raise LockHeld(
                f"another backup of target '{target_config.name}' is running (its lock is held)",
                hint="wait for it to finish; this run changed nothing",
            )
        storage = ctx.storage(target_config.primary_storage)
        storage.check_writable()
        started_at = ctx.clock()
        backup_id = new_backup_id(started_at)
        log.info("base backup started", target=target_config.name, backup_id=backup_id, storage=storage.name)
        with catalog.locked(storage, target_config.name, "backup", clock=ctx.clock, backup_id=backup_id):
            try:
                manifest = _stream_and_commit(
                    ctx,
                    conn,
                    target_config,
                    storage,
                    tool,
                    server,
                    segment_size,
                    state_dir,
                    backup_id,
                    started_at,
                    labels,
                    extra,
                )
            except BaseException:
                stream.remove_partial_backup(storage, target_config.name, backup_id)
                raise
    finally:
        with contextlib.suppress(psycopg.Error):  # the session is gone, and its lock with it
            locks.release_all(conn)
        conn.close()
    copies = stream.copy_to_secondaries(ctx, manifest, storage, target_config.storages[1:])
    result = BackupResult(manifest=manifest, storage=storage.name, copies=copies)
    log.info(
        "base backup committed",
        target=target_config.name,
        backup_id=manifest.id,
        size=manifest.size,
        duration_seconds=round(time.monotonic() - started, 2),
    )
    return result


def _preflight(conn: psycopg.Connection[Any], target: TargetConfig) -> int:
    """Return the cluster's WAL segment size; raise ConfigError for what a base backup cannot handle yet."""
    with conn.cursor() as cur:
        cur.execute("SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1")
        extra = [str(row[0]) for row in cur.fetchall()]
        cur.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")
        row = cur.fetchone()
        cur.execute("SELECT current_setting('archive_mode')")
        archive = cur.fetchone()
    if extra:
        raise ConfigError(
            f"target '{target.name}' has tablespaces besides pg_default ({', '.join(extra)}); "
            "base backups of several tablespaces are not supported yet",
            # -Ft -D - streams one tar, and PostgreSQL writes one tar per tablespace: only a directory can hold them.
            hint="run 'pg_basebackup -Ft -D <dir>' (one tar per tablespace) yourself, or move the tables to "
            "pg_default (ALTER TABLE ... SET TABLESPACE pg_default) and drop the tablespace; "
            "logical backups ('opskit backup now') work meanwhile",
        )
    if archive is not None and archive[0] == "off":
        log.warning("archive_mode is off: this base backup needs WAL from 'opskit wal stream'", target=target.name)
    return int(row[0]) if row else layout.DEFAULT_SEGMENT_SIZE


def _stream_and_commit(
    ctx: AppContext,
    conn: psycopg.Connection[Any],
    target: TargetConfig,
    storage: Storage,
    tool: tools.Tool,
    server: connection.ServerFacts,
    segment_size: int,
    state_dir: Path,
    backup_id: str,
    started_at: datetime,
    labels: Sequence[str],
    extra: Mapping[str, Any] | None,
) -> Manifest:
    recipients = ctx.config.encryption.recipients
    encrypted = bool(recipients)
    encryption = {"format": "age", "recipients": [recipient_fingerprint(r) for r in recipients]} if recipients else None
    application_name = f"opskit base backup {backup_id}"  # finds the run's walsender in pg_stat_activity
    argv = with_application_name(commands.pg_basebackup_argv(tool, target), application_name)
    key = tar_key(target.name, backup_id, encrypted)
    phase_start = time.monotonic()
    timeout = (ctx.config.wal or WalSettings()).archive_wait_timeout.total_seconds()
    with connection.password_env(target, state_dir) as env, ArchiveWait(conn, application_name, timeout) as wait:
        try:
            stored, captured = _store_tar(ctx, target, storage, argv, env, key)
        except BackupFailed as exc:
            if wait.timed_out:
                raise BackupFailed(
                    f"the server did not archive WAL segment {wait.segment} within {format_duration(timeout)} "
                    f"(wal.archive_wait_timeout): {wait.cause}",
                    hint="nothing was committed; fix archive_command (pg_stat_archiver, the server log) and run "
                    "the backup again; raise wal.archive_wait_timeout if archiving is only slow",
                ) from exc
            raise
    stop_time = ctx.clock()
    seconds = time.monotonic() - phase_start
    if BACKUP_MANIFEST_ARTIFACT not in captured or "backup_label" not in captured:
        raise BackupFailed(
            f"pg_basebackup of target '{target.name}' wrote no backup_label or backup_manifest",
            hint="nothing was committed; base backups need pg_basebackup 13 or newer",
        )
    facts = base_facts(captured["backup_label"], captured[BACKUP_MANIFEST_ARTIFACT], segment_size)
    facts |= {"stop_time": catalog.format_time(stop_time), "system_identifier": server.system_identifier}
    level = ctx.config.compression.level
    manifest_stored = compress_and_store(
        io.BytesIO(captured[BACKUP_MANIFEST_ARTIFACT]),
        storage,
        backup_manifest_key(target.name, backup_id, encrypted),
        level=level,
        recipients=recipients,
        cancel=ctx.cancel,
    )
    artifacts = (
        stream.artifact(TAR_ARTIFACT, key, stored, encryption),
        stream.artifact(
            BACKUP_MANIFEST_ARTIFACT,
            backup_manifest_key(target.name, backup_id, encrypted),
            manifest_stored,
            encryption,
        ),
    )
    manifest = Manifest(
        id=backup_id,
        target=target.name,
        opskit_version=__version__,
        # A base backup is consistent only once recovery has replayed up to its stop point.
        snapshot_time=stop_time,
        started_at=started_at,
        finished_at=ctx.clock(),
        server=server.to_dict() | {"host": connection.describe(target)},
        tools={
            "pg_basebackup": {
                "path": tool.path,
                "version": tool.version,
                "major": tool.major,
                "argv": commands.without_connection(argv),
            },
            "zstd": {"level": level, "library": f"python-zstandard {zstandard.__version__}"},
        },
        artifacts=artifacts,
        labels=tuple(labels),
        extra=dict(extra or {}) | {"phases": {"basebackup": round(seconds, 3)}, "storage": storage.name},
        kind=KIND,
        base=facts,
    )
    if ctx.cancel.is_set():
        raise BackupFailed("the run was cancelled (shutdown requested) before its manifest was written")
    catalog.check_artifacts_stored(storage, manifest)
    write_manifest(storage, manifest)
    return manifest


def with_application_name(argv: list[str], application_name: str) -> list[str]:
    """Return ``argv`` with ``application_name`` set in its ``--dbname=`` conninfo (a DSN's own one is replaced)."""
    prefix = "--dbname="
    return [
        prefix + make_conninfo(arg[len(prefix) :], application_name=application_name) if arg.startswith(prefix) else arg
        for arg in argv
    ]


_WALSENDER = """
SELECT pid, wait_event = 'BackupWaitWalArchive'
FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = %s
"""
_ARCHIVER = """
SELECT failed_count, last_failed_wal, last_failed_time, last_archived_wal, last_archived_time,
       coalesce(last_failed_time > last_archived_time OR (last_failed_time IS NOT NULL AND last_archived_time IS NULL),
                false)
FROM pg_stat_archiver
"""


class ArchiveWait:
    """While pg_basebackup runs: say when its walsender waits for the archive, end it past ``timeout`` seconds.

    A context manager around the run of pg_basebackup (application name ``application_name``),
    polling on ``conn`` (the run's regular session, idle meanwhile; psycopg serialises the two
    threads' use) every ``WAIT_POLL_SECONDS``. Afterwards ``timed_out`` says whether it ended
    the walsender for the timeout, ``segment`` and ``cause`` say what the server was waiting
    for and why. On the way out of a failed run, a walsender of the run still there is ended.
    Server errors in the watcher are logged once and end the watching, never the backup.
    """

    def __init__(self, conn: psycopg.Connection[Any], application_name: str, timeout: float) -> None:
        self.conn = conn
        self.application_name = application_name
        self.timeout = timeout
        self.timed_out = False
        self.segment: str | None = None
        self.cause = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="opskit-archive-wait", daemon=True)

    def __enter__(self) -> ArchiveWait:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)
        if exc_type is not None:
            self._end_walsender()

    def _watch(self) -> None:
        """Poll until the run ends; see the class docstring."""
        waiting_since: float | None = None
        said_at = 0.0
        try:
            while not self._done.wait(WAIT_POLL_SECONDS):
                row = self.conn.execute(_WALSENDER, (self.application_name,)).fetchone()
                if row is None or not row[1]:
                    continue
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    self.segment = self._current_segment()
                failing = self._read_archiver()
                # A healthy archive_command answers in seconds: say nothing unless it fails or it takes long.
                if (failing or now - waiting_since >= WAIT_SAY_SECONDS) and now - said_at >= WAIT_SAY_SECONDS:
                    log.warning(
                        f"waiting for the server to archive WAL segment {self.segment}: {self.cause}; "
                        "the base backup is usable only once it is archived",
                        timeout_seconds=self.timeout,
                    )
                    said_at = now
                if now - waiting_since >= self.timeout:
                    self.timed_out = True
                    self._end_walsender()
                    return
        except psycopg.Error as exc:
            log.warning("cannot watch the base backup's wait for the archive", error=connection.libpq_reason(exc))

    def _current_segment(self) -> str | None:
        """Return the segment the backup's stop switched away from (the newest the server must archive)."""
        # Read just after the stop's WAL switch: the write position is at the next segment's start, and
        # pg_walfile_name() of a segment boundary names the segment before it.
        row = self.conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
        return str(row[0]) if row else None

    def _read_archiver(self) -> bool:
        """Set ``cause`` from pg_stat_archiver; return True when archive_command is failing."""
        row = self.conn.execute(_ARCHIVER).fetchone()
        if row is None:
            return False
        failures, failed_wal, failed_at, archived_wal, archived_at, failing = row
        if failing:
            self.cause = (
                f"archive_command is failing (pg_stat_archiver: {failures} failures, last {failed_wal} "
                f"at {catalog.format_time(failed_at)})"
            )
        else:
            last = f"last archived {archived_wal} at {catalog.format_time(archived_at)}" if archived_wal else "none"
            self.cause = f"archive_command has not archived it yet (pg_stat_archiver: {last})"
        return bool(failing)

    def _end_walsender(self) -> None:
        """End the run's walsender if it is still there (logged; a failure only warned about)."""
        try:
            ended = self.conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE backend_type = 'walsender' AND application_name = %s",
                (self.application_name,),
            ).fetchall()
        except psycopg.Error as exc:
            log.warning("cannot end the base backup's walsender", error=connection.libpq_reason(exc))
            return
        for pid, _ok in ended:
            log.info("ended the base backup's walsender", pid=pid)


def base_facts(backup_label: bytes, backup_manifest: bytes, segment_size: int) -> dict[str, Any]:
    """Return the recovery facts of a base backup from its ``backup_label`` and ``backup_manifest``.

    ``timeline``, ``start_lsn``/``stop_lsn`` (``X/Y`` text, from the manifest's WAL-Ranges),
    ``start_time`` (the label's), ``wal_start``/``wal_stop`` (the first and last segment
    recovery needs) and ``segment_size``. Raises BackupFailed when either is unreadable.
    """
    try:
        label = dict(_LABEL_RE.findall(backup_label.decode("utf-8")))
        ranges = json.loads(backup_manifest)["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        timeline = int(last["Timeline"])
        start_lsn = layout.parse_lsn(first["Start-LSN"])
        stop_lsn = layout.parse_lsn(last["End-LSN"])
        start_time = datetime.strptime(label["TIME"], "%Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC)
    except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise BackupFailed(f"pg_basebackup's backup_label or backup_manifest is unreadable: {exc}") from exc
    return {
        "timeline": timeline,
        "start_lsn": layout.format_lsn(start_lsn),
        "stop_lsn": layout.format_lsn(stop_lsn),
        "start_time": catalog.format_time(start_time),
        "wal_start": layout.segment_name(int(first["Timeline"]), start_lsn, segment_size),
        # The stop LSN points just past the last record: its segment is the last one needed.
        "wal_stop": layout.segment_name(timeline, max(stop_lsn - 1, start_lsn), segment_size),
        "segment_size": segment_size,
    }


def _store_tar(
    ctx: AppContext, target: TargetConfig, storage: Storage, argv: list[str], env: dict[str, str], key: str
) -> tuple[StoreResult, dict[str, bytes]]:
    """Run pg_basebackup and stream its tar into ``key``; commit only if it exits 0.

    Returns the stream's hashes and the captured ``backup_label``/``backup_manifest``.
    """
    captures: list[TarMemberCapture] = []

    def capture_members(stdout: Any) -> TarMemberCapture:
        capture = TarMemberCapture(stdout, {"backup_label", BACKUP_MANIFEST_ARTIFACT})
        captures.append(capture)
        return capture

    stored = stream.store_tool_output(
        ctx,
        target,
        storage,
        argv,
        env,
        key,
        label=f"base backup {target.name}",
        program="pg_basebackup",
        hint=(
            "nothing was committed; refused at once: the role needs REPLICATION and a pg_hba.conf replication entry; "
            "cut mid-stream: the server stopped, see its log and run again"
        ),
        wrap=capture_members,
    )
    return stored, captures[0].captured
