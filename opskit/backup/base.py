"""``opskit backup now --kind base``: a pg_basebackup tar stream, the base of point-in-time recovery.

Order of work, as for a logical backup (:mod:`opskit.backup.backup`):

1. Preflight: connect, read the server's facts, refuse a cluster with extra tablespaces
   (``-Ft -D -`` streams one tar: the per-tablespace tars are not handled yet), choose a
   pg_basebackup at least as new as the server, take the target's backup lock (exit 7),
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
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
import zstandard

from opskit import __version__, catalog
from opskit.backup import stream
from opskit.backup.backup import BackupResult, lock_key
from opskit.backup.tarscan import TarMemberCapture
from opskit.catalog import Manifest, backup_prefix, new_backup_id, write_manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, ConfigError, LockHeld
from opskit.core.log import get_logger
from opskit.pg import commands, connection, locks, tools
from opskit.pipeline import StoreResult, compress_and_store, recipient_fingerprint
from opskit.storage.base import Storage, join_key
from opskit.wal import layout

log = get_logger(__name__)

KIND = "base"
TAR_ARTIFACT = "db"  # the name every backup's main artifact has (the catalog requires one)
BACKUP_MANIFEST_ARTIFACT = "backup_manifest"
_LABEL_RE = re.compile(r"^START (WAL LOCATION|TIME|TIMELINE): (.*?)\s*$", re.MULTILINE)


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

    Raises ConfigError (2) for a cluster with several tablespaces, UnreachableError (3) in
    preflight, LockHeld (7) when another backup of the target runs, BackupFailed (4) when
    pg_basebackup or the upload fails (nothing is left visible).
    """
    target_config = ctx.target(target)
    started = time.monotonic()
    conn = connection.connect(target_config, autocommit=True, application_name="opskit base backup")
    try:
        server = connection.server_facts(conn)
        segment_size = _preflight(conn, target_config)
        bin_dir = target_config.pg_bin_dir or ctx.config.tools.pg_bin_dir
        tool = tools.find_tool("pg_basebackup", server.major, bin_dir)
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
                    ctx, target_config, storage, tool, server, segment_size, backup_id, started_at, labels, extra
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
    target: TargetConfig,
    storage: Storage,
    tool: tools.Tool,
    server: connection.ServerFacts,
    segment_size: int,
    backup_id: str,
    started_at: datetime,
    labels: Sequence[str],
    extra: Mapping[str, Any] | None,
) -> Manifest:
    recipients = ctx.config.encryption.recipients
    encrypted = bool(recipients)
    encryption = {"format": "age", "recipients": [recipient_fingerprint(r) for r in recipients]} if recipients else None
    argv = commands.pg_basebackup_argv(tool, target)
    key = tar_key(target.name, backup_id, encrypted)
    phase_start = time.monotonic()
    with connection.password_env(target, ctx.state_dir) as env:
        stored, captured = _store_tar(ctx, target, storage, argv, env, key)
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
