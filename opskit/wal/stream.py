"""``opskit wal stream``: pg_receivewal on a replication slot, every finished segment shipped into the archive.

The streamer runs remote from the database (the daemon's sidecar): pg_receivewal writes
into a local spool, and this loop ships each completed segment (and ``.history`` file)
with the same create-if-absent push as ``opskit wal push``, then removes it from the
spool. The segment being written (``<segment>.partial``) is shipped under
``<segment>.partial.zst``, overwritten each time, every ``wal.partial_interval`` and
whenever it has grown by ``wal.partial_bytes`` since it was last shipped (and no finished
segment is waiting), so the RPO is bounded by that interval on a quiet server and by that
many bytes on a busy one, not by the segment size. When the storage is
unreachable, segments stay in the spool; past ``wal.max_spool`` the run stops with exit 4.

Two physical slots keep the server's WAL. pg_receivewal reports its local flush position, so
its slot (``wal.slot``) moves as soon as WAL is in the spool, before it is stored: alone it
would let the server recycle WAL that only the spool holds, and a lost spool (an evicted pod's
emptyDir) would be a permanent gap. The second slot, ``<slot>_shipped``, is advanced with
``pg_replication_slot_advance()`` only to the end of the newest segment stored in the archive
(over the streamer's regular connection; the role needs REPLICATION, as pg_receivewal does).
When the streamer starts on a spool that lacks the WAL from that point on (emptied, lost),
it makes pg_receivewal start there (an empty ``<segment>.partial``, which pg_receivewal takes
as its starting point), so the WAL is streamed again from the server and the archive has no
gap. The server keeps that WAL until the storage answers again; bound it with
``max_slot_wal_keep_size``. When the second slot cannot be created (``max_replication_slots``
reached, no privilege), the streamer warns once and runs as before, the spool then being the
only copy of WAL not yet stored.

While it runs, the streamer publishes a :class:`StreamState` per target (spool size and
limit, ship failures, whether the storage answered, the slot and archive lag polled every
``LAG_POLL_SECONDS``); the daemon's ``/metrics`` reads it at scrape time
(``opskit.ops.metrics``), so the figures move while the job is running.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from opskit.config.model import TargetConfig
from opskit.config.wal import WalSettings
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, OpskitError, UnreachableError
from opskit.core.execute import spawn
from opskit.core.log import get_logger
from opskit.pg import commands, connection, tools
from opskit.pipeline import compress_and_store
from opskit.wal import archive, lag, layout, partial

log = get_logger(__name__)

# How often the spool is looked at. A finished segment waits up to this long before it is shipped,
# so the archive lag exceeds one segment by the poll interval times the write rate (0.5 s gave
# 1.06-1.11 segments under pgbench in bench/pitr.py); a directory listing ten times a second costs nothing.
POLL_SECONDS = 0.1
# One small query on its own connection: often enough for an alert with `for: 15m`, rare enough
# not to be noticed on the server.
LAG_POLL_SECONDS = 10.0


@dataclass
class StreamState:
    """What a running streamer of one target knows about itself (read by the metrics at scrape time)."""

    target: str
    slot: str
    spool: Path
    spool_limit: int
    segment_size: int = layout.DEFAULT_SEGMENT_SIZE
    spool_bytes: int = 0
    ship_failures: int = 0
    storage_up: bool = True
    last_error: str | None = None
    slot_lag_bytes: int | None = None
    archive_lag_bytes: int | None = None
    newest_shipped: str | None = None
    newest_shipped_at: float | None = None  # Unix time the newest whole segment was stored
    archived_end: int | None = None  # LSN just past the newest WAL stored, a shipped partial's pages included
    partial_name: str | None = None  # the partial segment last shipped ...
    partial_digest: bytes = b""  # ... with this content (sha1 of the file) ...
    partial_written: int = 0  # ... holding this many bytes of WAL (whole pages)
    shipped_slot: str | None = None  # the slot advanced to what is stored (None: it could not be created)
    slot_advanced_to: int | None = None  # the LSN that slot was last advanced to


_LIVE: dict[str, StreamState] = {}
_LIVE_LOCK = threading.Lock()


def live_states() -> list[StreamState]:
    """Return a copy of the state of every streamer running in this process."""
    with _LIVE_LOCK:
        return [replace(state) for state in _LIVE.values()]


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
        row = conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()
        segment_size = int(row[0]) if row else layout.DEFAULT_SEGMENT_SIZE
        # pg_receivewal's slot first (without it nothing streams); the keeping slot is copied from it, so it
        # starts where that one is (an upgraded streamer's), or is left out when no slot is free.
        _ensure_slot(conn, settings.slot)
        keeps = _ensure_shipped_slot(conn, settings.slot, settings.shipped_slot)
        remove_torn_partials(spool, segment_size)
        if keeps:
            _start_where_stored(conn, settings.slot, settings.shipped_slot, spool, segment_size)
    bin_dir = source.pg_bin_dir or ctx.config.tools.pg_bin_dir
    tool = tools.find_tool("pg_receivewal", server.major, bin_dir)
    argv = commands.pg_receivewal_argv(tool, source, directory=str(spool), slot=settings.slot)
    result = StreamResult(target=source.name)
    state = StreamState(
        source.name,
        settings.slot,
        spool,
        settings.max_spool,
        segment_size=segment_size,
        spool_bytes=spool_size(spool),
        shipped_slot=settings.shipped_slot if keeps else None,
    )
    with _LIVE_LOCK:
        _LIVE[source.name] = state
    log.info("wal stream started", target=source.name, slot=settings.slot, spool=str(spool))
    try:
        _stream(ctx, argv, settings, state, result)
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(source.name, None)
    log.info("wal stream stopped", target=source.name, segments=result.segments, partials=result.partials)
    return result


def _stream(ctx: AppContext, argv: list[str], settings: WalSettings, state: StreamState, result: StreamResult) -> None:
    """Run pg_receivewal and ship from the spool until cancelled; raise as :func:`run` says."""
    source = ctx.target(state.target)
    last_partial = 0.0
    last_lag = 0.0
    with (
        connection.password_env(source, ctx.state_dir) as env,
        spawn(argv, env=env, stdout=subprocess.DEVNULL) as child,
        _advance_at_exit(source, state),
    ):
        while not ctx.cancel.is_set():
            shipped = _ship_completed(ctx, state)
            result.segments += shipped
            due = time.monotonic() - last_partial >= settings.partial_interval.total_seconds()
            # Finished segments go first: a partial shipped while one waits would only delay it.
            if not shipped and (due or _partial_grown(state, settings.partial_bytes)):
                result.partials += _ship_partial(ctx, state)
                last_partial = time.monotonic()
            if time.monotonic() - last_lag >= LAG_POLL_SECONDS:
                _poll_lag(source, state)
                last_lag = time.monotonic()
            _check_spool(state)
            if child.popen.poll() is not None:
                result.segments += _ship_completed(ctx, state)
                child.check(BackupFailed, f"pg_receivewal of target '{source.name}' stopped")
                raise BackupFailed(f"pg_receivewal of target '{source.name}' stopped", hint="the next run resumes")
            ctx.cancel.wait(POLL_SECONDS)
        child.kill()


def remove_torn_partials(spool: Path, segment_size: int) -> list[str]:
    """Delete ``.partial`` files of a size other than 0 or ``segment_size``; return their names.

    pg_receivewal pads a new ``.partial`` to the full segment size before it writes any WAL
    into it, and refuses to start on a file of any other size ("has N bytes, should be 0 or
    16777216"). Such a file is what a pg_receivewal stopped mid-padding leaves (the streamer
    stops it at the spool limit, a pod is killed): zeros only, nothing the slot would not
    send again, so it is removed before pg_receivewal starts.
    """
    torn = []
    for path in spool.glob("*.partial"):
        size = path.stat().st_size
        if size not in (0, segment_size):
            path.unlink(missing_ok=True)
            torn.append(path.name)
            log.warning("wal stream: removed a partial segment left half-padded", wal=path.name, size=size)
    return torn


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


def _ensure_shipped_slot(conn: psycopg.Connection[Any], slot: str, shipped: str) -> bool:
    """Create ``shipped``, the slot that keeps WAL until it is stored, unless it exists; return True when it does.

    A copy of pg_receivewal's ``slot`` when that exists (an upgraded streamer: the new slot
    starts where the old one is, not at the current position), else a new slot reserving WAL
    now; one the server invalidated (``max_slot_wal_keep_size``) is made again. Returns
    False, with one warning, when it cannot be made (``max_replication_slots`` reached, a
    role without REPLICATION): the streamer then runs with pg_receivewal's slot alone.
    """
    row = conn.execute(
        "SELECT restart_lsn IS NULL FROM pg_replication_slots WHERE slot_name = %s", (shipped,)
    ).fetchone()
    if row is not None and not row[0]:
        return True
    main = conn.execute(
        "SELECT restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    try:
        if row is not None:
            # Invalidated: it keeps nothing any more. Made again, it keeps WAL from now on.
            log.warning(
                "wal stream: the slot that keeps unstored WAL was invalidated (max_slot_wal_keep_size); "
                "WAL the server dropped is missing from the archive: take a new base backup",
                slot=shipped,
            )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (shipped,))
        copied = False
        if main is not None and main[0]:
            with contextlib.suppress(psycopg.Error):  # pg_copy_physical_replication_slot() is PostgreSQL 12+
                conn.execute("SELECT pg_copy_physical_replication_slot(%s, %s)", (slot, shipped))
                copied = True
        if not copied:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (shipped,))
    except psycopg.Error as exc:
        log.warning(
            "wal stream: cannot create the slot that keeps WAL on the server until it is stored; "
            "WAL in the spool that is not stored yet is lost with the spool",
            slot=shipped,
            error=connection.libpq_reason(exc),
        )
        return False
    log.info("wal stream: created the slot that keeps WAL until it is stored", slot=shipped)
    return True


def _start_where_stored(
    conn: psycopg.Connection[Any], slot: str, shipped: str, spool: Path, segment_size: int
) -> str | None:
    """Make pg_receivewal start at the WAL not stored yet when the spool lacks it; return the marker's name or None.

    Reads ``shipped``'s ``restart_lsn`` (the end of the newest stored segment), pg_receivewal's
    ``slot``'s (how far WAL had reached the spool) and the server's timeline;
    :func:`prepare_spool` decides. On a standby (no current timeline to read) nothing is done,
    with a warning.
    """
    row = conn.execute(
        "SELECT restart_lsn::text, "
        "(SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %(slot)s), "
        "CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END "
        "FROM pg_replication_slots WHERE slot_name = %(shipped)s",
        {"slot": slot, "shipped": shipped},
    ).fetchone()
    if row is None or row[0] is None:
        return None
    if row[2] is None:
        log.warning("wal stream: the server is a standby; a lost spool is not streamed again", slot=shipped)
        return None
    spooled_end = layout.parse_lsn(row[1]) if row[1] is not None else None
    return prepare_spool(spool, layout.parse_lsn(row[0]), int(row[2], 16), segment_size, spooled_end)


def prepare_spool(
    spool: Path, stored_end: int, timeline: int, segment_size: int, spooled_end: int | None = None
) -> str | None:
    """Make pg_receivewal's next start cover the WAL from ``stored_end`` on; return the marker written, or None.

    pg_receivewal starts at the newest WAL file of its directory, and only when there is none
    at its slot (PostgreSQL 15+) or at the server's current position: after the spool is
    lost, that skips the WAL spooled but not stored. When the spool holds no WAL file of the
    segment holding ``stored_end`` or an earlier one, its WAL files are removed (the server
    still has them: the keeping slot is at ``stored_end``) and an empty ``<segment>.partial``
    of that segment on ``timeline`` is written, which pg_receivewal pads and fills from its start.

    ``spooled_end`` is pg_receivewal's slot's position, how far WAL had reached a spool (None:
    unknown). Only when it is past ``stored_end`` did the spool lose WAL not stored, which is
    warned about; otherwise (a first start: both slots new, an archive and a spool that are
    empty) nothing was lost and the start is logged at info.
    """
    start = stored_end // segment_size
    files = [p for p in spool.iterdir() if _spool_segment(p.name) is not None]
    numbers = [layout.segment_number(_spool_segment(p.name) or "", segment_size)[1] for p in files]
    if numbers and min(numbers) <= start:
        return None
    for path in files:
        path.unlink(missing_ok=True)
    marker = layout.segment_name(timeline, start * segment_size, segment_size) + ".partial"
    (spool / marker).touch()
    where = {"start": layout.format_lsn(start * segment_size), "wal": marker, "removed": len(files)}
    if files or spooled_end is None or spooled_end > stored_end:
        log.warning("wal stream: the spool lacks WAL not stored yet; streaming it again from the server", **where)
    else:
        log.info("wal stream: streaming starts at the first WAL not stored yet", **where)
    return marker


def _spool_segment(name: str) -> str | None:
    """Return the segment name of a spool file (``<segment>`` or ``<segment>.partial``), or None."""
    base = name.removesuffix(".partial")
    return base if layout.is_segment_name(base) else None


def _ship_completed(ctx: AppContext, state: StreamState) -> int:
    """Push every finished file in the spool and remove it; return how many were shipped.

    A storage failure leaves the file in the spool for the next round (logged once per round)
    and marks the storage down in ``state`` until a push succeeds again.
    """
    shipped = 0
    target_config = ctx.target(state.target)
    for path in sorted(state.spool.iterdir()):
        if not (layout.is_segment_name(path.name) or layout.is_history_name(path.name)):
            continue
        try:
            archive.push_bytes(ctx, target_config, path.name, path.read_bytes())
        except OpskitError as exc:
            if "different content" in exc.message:
                raise
            _ship_failed(state, path.name, exc)
            return shipped
        path.unlink()
        _shipped(state, path.name)
        shipped += 1
    return shipped


def _newest_partial(spool: Path) -> Path | None:
    """Return the segment pg_receivewal is writing (``<segment>.partial``), or None."""
    partials = sorted(p for p in spool.iterdir() if p.name.endswith(".partial"))
    return partials[-1] if partials else None


def _partial_grown(state: StreamState, threshold: int) -> bool:
    """Return True when the segment being written holds ``threshold`` bytes more WAL than its last shipped copy.

    False when ``threshold`` is 0 (shipping on size is off) or there is no partial. A dozen
    small reads (:func:`opskit.wal.partial.written_bytes`), cheap enough for every poll.
    """
    path = _newest_partial(state.spool) if threshold else None
    if path is None:
        return False
    try:
        with path.open("rb") as stream:
            written = partial.written_bytes(stream, path.stat().st_size)
    except FileNotFoundError:
        return False  # finished meanwhile: shipped whole next round
    shipped = state.partial_written if path.name == state.partial_name else 0
    return written - shipped >= threshold


def _ship_partial(ctx: AppContext, state: StreamState) -> int:
    """Store the segment being written as ``<segment>.partial.zst`` (overwritten); return 1 when one was shipped.

    A partial unchanged since it was last shipped (same content; a modification time can miss a
    write landing in the same clock tick) is not stored again.
    """
    path = _newest_partial(state.spool)
    if path is None:
        return 0
    try:
        data = path.read_bytes()
        digest = hashlib.sha1(data, usedforsecurity=False).digest()  # ~10 ms for 16 MiB: only to skip a re-store
        if path.name == state.partial_name and digest == state.partial_digest:
            return 0
        written = partial.written_bytes(io.BytesIO(data), len(data))
        if not written:
            # Empty or only padded (the start marker of a spool streamed again): storing it would overwrite a
            # shipped partial of the same segment that holds WAL.
            return 0
        compress_and_store(
            io.BytesIO(data),
            archive.archive_storage(ctx, ctx.target(state.target)),
            layout.object_key(state.target, path.name, bool(ctx.config.encryption.recipients)),
            level=ctx.config.compression.level,
            recipients=ctx.config.encryption.recipients,
        )
    except FileNotFoundError:
        return 0  # pg_receivewal finished the segment meanwhile: it is shipped as a whole next round
    except OpskitError as exc:
        _ship_failed(state, path.name, exc)
        return 0
    _shipped(state, None)
    with _LIVE_LOCK:
        state.partial_name, state.partial_digest, state.partial_written = path.name, digest, written
        if written:
            _timeline, number = layout.segment_number(path.name[:24], state.segment_size)
            state.archived_end = max(state.archived_end or 0, number * state.segment_size + written)
    return 1


def _shipped(state: StreamState, name: str | None) -> None:
    """Record a successful store (of segment ``name``, or None for a partial or history file)."""
    with _LIVE_LOCK:
        if not state.storage_up:
            log.info("wal stream: the storage answers again", target=state.target)
        state.storage_up = True
        state.last_error = None
        if name is not None and layout.is_segment_name(name):
            state.newest_shipped = name
            state.newest_shipped_at = time.time()
            state.archived_end = max(state.archived_end or 0, lag.segment_end(name, state.segment_size))


def _ship_failed(state: StreamState, name: str, exc: OpskitError) -> None:
    """Record a failed store: counted, the storage marked down, one warning naming the file and the cause."""
    with _LIVE_LOCK:
        state.ship_failures += 1
        state.storage_up = False
        state.last_error = exc.one_line()
    log.warning("wal stream: storage failed, WAL kept in the spool", wal=name, error=exc.one_line())


def _poll_lag(source: TargetConfig, state: StreamState) -> None:
    """Advance the keeping slot to what is stored, read the slot and archive lag into ``state``; log failures, never raise.

    The streamer must keep shipping while the server is briefly away (pg_receivewal reconnects
    on its own terms); the lag is then unknown, and the slot stays where it was (keeping more
    WAL, never less), until the next poll.
    """
    try:
        _advance_shipped_slot(source, state)
        found = lag.server_lag(source, state.slot, state.newest_shipped, archived_end=state.archived_end)
    except OpskitError as exc:
        log.warning("wal stream: cannot advance the slot or read the slot lag", slot=state.slot, error=exc.one_line())
        found = lag.WalLag(current_lsn=None)
    with _LIVE_LOCK:
        state.slot_lag_bytes = found.slot_lag_bytes
        state.archive_lag_bytes = found.archive_lag_bytes


def _advance_shipped_slot(source: TargetConfig, state: StreamState) -> None:
    """Move ``state.shipped_slot`` to the end of the newest segment this run stored; a no-op when it is there.

    Only whole segments count: a lost spool is streamed again from a segment's start (a
    shipped partial is overwritten by the whole segment). Segments are stored in order and a
    failure stops the round, so everything before that end is in the archive. The slot is
    never moved back (the WHERE clause; pg_replication_slot_advance refuses to). Raises
    UnreachableError (3) when the server cannot be reached or refuses.
    """
    if state.shipped_slot is None or state.newest_shipped is None:
        return
    end = lag.segment_end(state.newest_shipped, state.segment_size)
    if state.slot_advanced_to is not None and end <= state.slot_advanced_to:
        return
    with connection.connect(source, autocommit=True, application_name="opskit wal stream") as conn:
        try:
            conn.execute(
                "SELECT pg_replication_slot_advance(slot_name, %(end)s::pg_lsn) FROM pg_replication_slots "
                "WHERE slot_name = %(slot)s AND restart_lsn < %(end)s::pg_lsn",
                {"slot": state.shipped_slot, "end": layout.format_lsn(end)},
            )
        except psycopg.Error as exc:
            raise UnreachableError(
                f"cannot advance the slot '{state.shipped_slot}' of target '{source.name}': "
                f"{connection.libpq_reason(exc)}",
                hint="the server keeps the WAL meanwhile; the next poll tries again",
            ) from exc
    state.slot_advanced_to = end


@contextlib.contextmanager
def _advance_at_exit(source: TargetConfig, state: StreamState) -> Iterator[None]:
    """On the way out of a run, advance the keeping slot past what was stored since the last poll (best effort).

    Lets the server recycle that WAL now rather than at the next run's first poll; a failure
    is logged only (the slot then keeps more WAL, never less).
    """
    try:
        yield
    finally:
        try:
            _advance_shipped_slot(source, state)
        except OpskitError as exc:
            log.warning("wal stream: cannot advance the slot", slot=state.shipped_slot, error=exc.one_line())


def _check_spool(state: StreamState) -> None:
    """Record the spool's size; raise BackupFailed when it holds more than the limit (the storage is not keeping up)."""
    size = spool_size(state.spool)
    with _LIVE_LOCK:
        state.spool_bytes = size
    if size > state.spool_limit:
        cause = f" (last storage error: {state.last_error})" if state.last_error else ""
        raise BackupFailed(
            f"the WAL spool '{state.spool}' holds {size} bytes, over wal.max_spool ({state.spool_limit}): "
            f"the storage is not keeping up{cause}",
            hint=(
                f"fix the storage (the slot '{state.shipped_slot}' keeps the server's WAL meanwhile) "
                "and start the stream again"
                if state.shipped_slot
                else "fix the storage and start the stream again; keep the spool: it alone holds that WAL"
            ),
        )


def spool_size(spool: Path) -> int:
    """Return the bytes in the spool (0 when it does not exist).

    pg_receivewal renames ``<segment>.partial`` when the segment completes, so a file listed a
    moment ago may be gone: it is skipped (its new name is counted on the next call).
    """
    if not spool.exists():
        return 0
    total = 0
    for path in spool.iterdir():
        try:
            if path.is_file():
                total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total
