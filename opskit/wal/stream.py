"""``opskit wal stream``: pg_receivewal on a replication slot, every finished segment shipped into the archive.

The streamer runs remote from the database (the daemon's sidecar): pg_receivewal writes
into a local spool, and this loop ships each completed segment (and ``.history`` file)
with the same create-if-absent push as ``opskit wal push``, then removes it from the
spool. The segment being written (``<segment>.partial``) is shipped every
``wal.partial_interval`` under ``<segment>.partial.zst``, overwritten each time, so the
RPO is bounded by that interval and not by the segment size. When the storage is
unreachable, segments stay in the spool; past ``wal.max_spool`` the run stops with exit 4,
and the slot keeps the server's WAL until streaming resumes (bound it on the server with
``max_slot_wal_keep_size``).
"""

from __future__ import annotations

import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from opskit.config.wal import WalSettings
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, OpskitError
from opskit.core.execute import spawn
from opskit.core.log import get_logger
from opskit.pg import commands, connection, tools
from opskit.pipeline import compress_and_store
from opskit.wal import archive, layout

log = get_logger(__name__)

POLL_SECONDS = 0.5


@dataclass
class StreamResult:
    """What one streaming run shipped before it stopped."""

    target: str
    segments: int = 0
    partials: int = 0


def run(ctx: AppContext, target: str | None = None) -> StreamResult:
    """Stream ``target``'s WAL until cancelled (SIGTERM, daemon shutdown); return what was shipped.

    Raises UnreachableError (3) when the server or pg_receivewal cannot be reached,
    BackupFailed (4) when pg_receivewal exits or the spool outgrows ``wal.max_spool``.
    """
    settings = ctx.config.wal or WalSettings()
    source = ctx.target(target)
    spool = Path(ctx.state_dir) / settings.spool_dir / source.name
    spool.mkdir(parents=True, exist_ok=True)
    with connection.connect(source, autocommit=True, application_name="opskit wal stream") as conn:
        server = connection.server_facts(conn)
        _ensure_slot(conn, settings.slot)
    bin_dir = source.pg_bin_dir or ctx.config.tools.pg_bin_dir
    tool = tools.find_tool("pg_receivewal", server.major, bin_dir)
    argv = commands.pg_receivewal_argv(tool, source, directory=str(spool), slot=settings.slot)
    result = StreamResult(target=source.name)
    last_partial = 0.0
    log.info("wal stream started", target=source.name, slot=settings.slot, spool=str(spool))
    with (
        connection.password_env(source, ctx.state_dir) as env,
        spawn(argv, env=env, stdout=subprocess.DEVNULL) as child,
    ):
        while not ctx.cancel.is_set():
            result.segments += _ship_completed(ctx, source.name, spool)
            if time.monotonic() - last_partial >= settings.partial_interval.total_seconds():
                result.partials += _ship_partial(ctx, source.name, spool)
                last_partial = time.monotonic()
            _check_spool(spool, settings.max_spool)
            if child.popen.poll() is not None:
                result.segments += _ship_completed(ctx, source.name, spool)
                child.check(BackupFailed, f"pg_receivewal of target '{source.name}' stopped")
                raise BackupFailed(f"pg_receivewal of target '{source.name}' stopped", hint="the next run resumes")
            ctx.cancel.wait(POLL_SECONDS)
        child.kill()
    log.info("wal stream stopped", target=source.name, segments=result.segments, partials=result.partials)
    return result


def _ensure_slot(conn: psycopg.Connection[Any], slot: str) -> None:
    """Create the physical replication slot ``slot`` (reserving WAL now) unless it exists; free it if held.

    A streamer killed with SIGKILL leaves its pg_receivewal running, holding the slot, so the
    next run could never attach: the walsender of a slot still held is terminated (its
    pg_receivewal, started with --no-loop, exits). Only one streamer per target may run; the
    daemon's run ledger sees to that.
    """
    row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        conn.execute(sql.SQL("SELECT pg_create_physical_replication_slot({}, true)").format(sql.Literal(slot)))
        return
    if row[0] is not None:
        log.warning("wal stream: the slot is held by an earlier streamer; ending its connection", slot=slot, pid=row[0])
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
            if held is None or not held[0]:
                return
            time.sleep(0.1)


def _ship_completed(ctx: AppContext, target: str, spool: Path) -> int:
    """Push every finished file in the spool and remove it; return how many were shipped.

    A storage failure leaves the file in the spool for the next round (logged once per round).
    """
    shipped = 0
    target_config = ctx.target(target)
    for path in sorted(spool.iterdir()):
        if not (layout.is_segment_name(path.name) or layout.is_history_name(path.name)):
            continue
        try:
            archive.push_bytes(ctx, target_config, path.name, path.read_bytes())
        except OpskitError as exc:
            if "different content" in exc.message:
                raise
            log.warning("wal stream: storage failed, segment kept in the spool", wal=path.name, error=exc.one_line())
            return shipped
        path.unlink()
        shipped += 1
    return shipped


def _ship_partial(ctx: AppContext, target: str, spool: Path) -> int:
    """Store the segment being written as ``<segment>.partial.zst`` (overwritten); return 1 when one was shipped."""
    partials = sorted(p for p in spool.iterdir() if p.name.endswith(".partial"))
    if not partials:
        return 0
    path = partials[-1]
    try:
        data = path.read_bytes()
        compress_and_store(
            io.BytesIO(data),
            archive.archive_storage(ctx, ctx.target(target)),
            layout.object_key(target, path.name, bool(ctx.config.encryption.recipients)),
            level=ctx.config.compression.level,
            recipients=ctx.config.encryption.recipients,
        )
    except FileNotFoundError:
        return 0  # pg_receivewal finished the segment meanwhile: it is shipped as a whole next round
    except OpskitError as exc:
        log.warning("wal stream: could not ship the partial segment", wal=path.name, error=exc.one_line())
        return 0
    return 1


def _check_spool(spool: Path, limit: int) -> None:
    """Raise BackupFailed when the spool holds more than ``limit`` bytes (the storage is not keeping up)."""
    size = sum(p.stat().st_size for p in spool.iterdir() if p.is_file())
    if size > limit:
        raise BackupFailed(
            f"the WAL spool '{spool}' holds {size} bytes, over wal.max_spool ({limit}): the storage is not keeping up",
            hint="fix the storage (the replication slot keeps the server's WAL meanwhile) and start the stream again",
        )


def spool_size(spool: Path) -> int:
    """Return the bytes in the spool (0 when it does not exist)."""
    return sum(p.stat().st_size for p in spool.iterdir() if p.is_file()) if spool.exists() else 0
