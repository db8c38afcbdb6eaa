"""``opskit restore --pitr``: a base backup plus archived WAL, recovered by PostgreSQL to a chosen moment.

Order of work, and why:

1. Decide before touching anything (pure :func:`choose_base`): the newest base backup that
   is consistent before the target (its stop time for ``--to-time``, its stop LSN for
   ``--to-lsn``; the newest for ``--to-name`` and ``--latest``), and check that the archive
   holds the last WAL segment it needs and WAL up to the target (a time after the moment it is
   known to hold every transaction up to: its newest WAL's store time, or when the source
   server confirms it wrote nothing since, :mod:`opskit.restore.pitr_complete`; an LSN past
   its end), so a hopeless restore fails in a second (exit 2);
   ``--latest`` on a chain with a gap fails there too (exit 5).
2. Extract the backup's tar stream (``Storage.reader`` -> sha256 -> [age -d] -> zstd -d ->
   sha256 -> ``tar -x``) into the empty ``--pgdata`` directory; the hashes are checked
   against the manifest before the directory is declared restored (exit 5 otherwise).
3. Write ``recovery.signal`` and the recovery settings into ``postgresql.auto.conf``:
   ``restore_command`` calling ``opskit wal fetch``, ``recovery_target_*``,
   ``recovery_target_action = 'promote'``, and ``archive_mode = off``: the copy must not
   push its own WAL (a new timeline) into the archive of the cluster it came from.
4. With ``--start``: run the server of the backup's major on a free loopback port, wait
   until recovery ends (the server promotes), and report the point reached: the replay LSN,
   the time of the last replayed transaction and the timeline. The server keeps running.
   Recovery must not end short of what the archive held when the server started: a
   segment the fetch refuses (corrupt, undecryptable, unreadable) aborts it (``wal fetch``
   exits above 125) and the restore exits with the fetch's code (5 for a corrupt one); a
   recovery to the archive's end that stopped before its newest segment exits 5 naming the
   first segment missing. A time or LSN target after the last archived WAL record (a quiet
   database) is recovered to the archive's end, as the state at that moment, and said so.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from opskit.catalog import Manifest, find_backup, list_backups
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError, VerificationFailed
from opskit.core.log import get_logger
from opskit.restore.pitr_chain import (
    ArchivedChain,
    archived_chain,
    check_newest_on_path,
    check_no_gap,
    check_not_reached,
    check_reachable,
    check_reached,
)
from opskit.restore.pitr_directory import empty_again, empty_directory, extract
from opskit.restore.pitr_model import PitrResult, RecoveryTarget, choose_base, confirmed_window, pitr_window
from opskit.restore.pitr_server import (
    read_log,
    server_ran,
    start_server,
    stop_server,
    stopped_when_interrupted,
    wait_for_recovery,
)
from opskit.restore.pitr_settings import retarget_to_end, write_recovery_settings
from opskit.restore.server_user import give_to_server_user, server_user
from opskit.wal import archive, layout, readahead

log = get_logger(__name__)


FIRST_SEGMENT_WAIT_SECONDS = 30


READER_EXIT_SECONDS = 5


REACHABLE_HINT = "pick a moment inside it ('opskit wal covers MOMENT' answers), or --latest for the archive's end"


NOT_REACHED = "recovery ended before configured recovery target was reached"


def run(
    ctx: AppContext,
    pgdata: str,
    target: str | None = None,
    storage: str | None = None,
    to_time: datetime | None = None,
    to_lsn: str | None = None,
    to_name: str | None = None,
    selector: str | None = None,
    start: bool = False,
    opskit_command: str | None = None,
) -> PitrResult:
    """Restore ``target``'s cluster into the empty directory ``pgdata``, set to recover to the given moment.

    ``selector`` names a base backup instead of the automatic choice; ``opskit_command`` is
    how the server runs opskit in its restore_command (default: this interpreter). Raises
    ConfigError (2) for a bad directory, target or missing backup/WAL, a time or LSN past the
    archived WAL (before anything is extracted) or a restore point not reached, RestoreFailed
    (4) when extraction or recovery fails, VerificationFailed (5) when the stream's hashes
    differ, a fetch refused a corrupt WAL segment, or recovery to the archive's end stopped
    short of it (:func:`recover`; a gap found in the listing fails before the extract).
    """
    recovery = RecoveryTarget(time=to_time, lsn=to_lsn, name=to_name)
    source = ctx.target(target)
    store = ctx.storage(storage or source.primary_storage)
    directory = empty_directory(pgdata)
    if selector is not None:
        manifest = find_backup(store, source.name, selector, now=ctx.clock(), kind="base")
    else:
        chosen = choose_base(list_backups(store, source.name), recovery, ctx.clock())
        if chosen is None:
            raise ConfigError(
                f"target '{source.name}' has no base backup consistent before {recovery.describe()} "
                f"in storage '{store.name}'",
                hint="take one with 'opskit backup now --kind base'; a moment before the oldest one cannot be reached",
            )
        manifest = chosen
    check_wal_archived(store, source.name, manifest)
    window = pitr_window(store, source.name, [manifest], ctx.clock())
    if window is not None:
        # A time after the newest WAL's store time: the source server may confirm that it wrote nothing since.
        window, unconfirmed = confirmed_window(ctx, store, source.name, manifest, window, recovery.time)
        size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
        check_reachable(recovery, window, size, hint=REACHABLE_HINT, unconfirmed=unconfirmed)
    # Listed now, before the server starts: WAL archived later is not what recovery had to reach.
    chain = archived_chain(ctx, source.name, storage or source.primary_storage, manifest)
    check_no_gap(chain, recovery)
    check_newest_on_path(chain, window, recovery)
    restore_command(ctx, source, opskit_command, storage)  # no config file: refused before anything is written
    result = PitrResult(manifest=manifest, pgdata=str(directory), target=recovery)
    log.info("pitr restore started", target=source.name, backup_id=manifest.id, to=recovery.describe())
    began = time.monotonic()
    extract(ctx, store, manifest, directory)
    result.phases["extract"] = time.monotonic() - began
    try:
        command = restore_command(ctx, source, opskit_command, storage)
        write_recovery_settings(directory, command, recovery, manifest.id)
        give_to_server_user(directory)
        if start:
            _start_and_recover(ctx, source, manifest, directory, result, chain, storage)
    except KeyboardInterrupt:
        if not server_ran(directory):
            # Interrupted between the extract and any server: leave the directory as it was found.
            empty_again(directory)
            log.warning("interrupted before the restored server started: what was extracted was removed")
        raise
    log.info("pitr restore done", backup_id=manifest.id, pgdata=str(directory), started=result.started)
    return result


def _start_and_recover(
    ctx: AppContext,
    source: TargetConfig,
    manifest: Manifest,
    directory: Path,
    result: PitrResult,
    chain: ArchivedChain,
    storage: str | None,
) -> None:
    """Start the read-ahead and the server, recover (:func:`recover`), record the phase; stop a server promoted short."""
    began = time.monotonic()
    with stopped_when_interrupted(ctx, source, manifest, directory):  # Ctrl-C: no server left running
        reader = start_read_ahead(ctx, source, manifest, directory, storage)
        try:
            recover(ctx, source, manifest, directory, result, chain)
        except VerificationFailed as exc:
            if not (directory / "postmaster.pid").exists():
                raise
            # Promoted short of the archive: such a copy must not pass for the restored cluster.
            stop_server(ctx, source, manifest, directory)
            hint = f"{exc.hint}; the server was stopped, its data directory is left at '{directory}'"
            raise VerificationFailed(exc.message, hint=hint) from exc
    if reader is not None:
        reader.join(READER_EXIT_SECONDS)  # it removes pg_wal/opskit-prefetch as the server is ready
    result.phases["recovery"] = time.monotonic() - began


def restore_command(
    ctx: AppContext, source: TargetConfig, opskit_command: str | None = None, storage: str | None = None
) -> str:
    """Return the server's ``restore_command``: ``opskit --config <file> wal fetch --target <t> [--storage <s>] %f %p``.

    ``storage`` is the storage the restore reads (``restore --pitr --storage``): the WAL must
    come from the same place as the base backup, e.g. an offsite copy when the primary
    storage is gone. Without it the fetch reads the target's primary storage.

    Behind a shell test (``archive.with_read_ahead``): a segment an earlier fetch read ahead is
    moved into place without starting the interpreter, which costs more than the rename
    (measured in bench/pitr.py: the PITR restore went from 2.9x to 1.9x pgBackRest's).
    ``opskit_command`` is how the server's user runs opskit (default: ``[tools] opskit_command``,
    else this interpreter).
    Raises ConfigError when opskit runs without a config file (the fetch must read the same one).
    """
    config_path = ctx.config.source
    if config_path is None:
        raise ConfigError("restore --pitr needs a config file (--config): the server's restore_command reads it")
    fetch = opskit_command or ctx.config.tools.opskit_command or shlex.join([sys.executable, "-m", "opskit"])
    command = f"{fetch} --config {shlex.quote(str(Path(config_path).resolve()))} wal fetch"
    command += f" --target {shlex.quote(source.name)}"
    if storage is not None:
        command += f" --storage {shlex.quote(storage)}"
    return archive.with_read_ahead(command + " %f %p")


def check_wal_archived(store: Any, target: str, manifest: Manifest) -> None:
    """Raise ConfigError when the last WAL segment the base backup needs is not in the archive."""
    needed = str(manifest.base.get("wal_stop", ""))
    if not needed:
        raise ConfigError(f"backup {manifest.id} records no WAL range; it cannot be recovered to a moment")
    if not any(store.exists(layout.object_key(target, needed, encrypted)) for encrypted in (False, True)):
        raise ConfigError(
            f"WAL segment {needed}, which base backup {manifest.id} needs, is not archived for target '{target}'",
            hint="check archive_command ('opskit wal push %p') or 'opskit wal stream' on the source",
        )


def start_read_ahead(
    ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path, storage: str | None = None
) -> threading.Thread | None:
    """Start reading the backup's WAL into ``pg_wal/opskit-prefetch`` in this process, before the server asks.

    The server about to start in ``directory`` then finds its first segments (and the answer
    to its first history probe) ready, instead of waiting for a fetch to start an interpreter
    (``opskit.wal.readahead``). Best effort: without it the server's fetches do it all.
    ``storage`` is the one the restore reads (None: the target's primary), as in :func:`restore_command`.
    Returns the reader's thread (None when the manifest names no first segment).
    """
    first = str(manifest.base.get("wal_start") or "")
    size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
    if not layout.is_segment_name(first) or size <= 0 or size & (size - 1):
        return None
    spool = directory / "pg_wal" / archive.PREFETCH_DIR
    spool.mkdir(exist_ok=True)
    give_to_server_user(spool)  # the server renames files out of it
    user = server_user()
    store = archive.archive_storage(ctx, source, storage)

    def read(name: str) -> bytes | None:
        return archive.archived_wal(ctx, store, source.name, name)

    reader = readahead.start_thread(read, first, size, spool, (user.pw_uid, user.pw_gid) if user else None)
    # The server asks for its first segments at once, and replays segments of little WAL
    # faster than they are read: waiting for the first batch costs less than one fetch
    # falling back to an interpreter start.
    reader.first_batch.wait(FIRST_SEGMENT_WAIT_SECONDS)
    return reader.thread


def recover(
    ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path, result: PitrResult, chain: ArchivedChain
) -> None:
    """Start the restored server, wait until it promotes, and check it replayed the WAL the archive holds.

    When the WAL ends before a time or LSN target (PostgreSQL's NOT_REACHED: nothing after the
    moment is archived, as on a quiet database), the state at the target is the archive's
    end: the server is started again with the target cleared, and ``result.note`` says so.
    A recovery that ran to the end of its WAL (``--latest``, or that retarget) must have
    reached the chain's newest segment (:func:`check_reached`). Raises VerificationFailed (5)
    when it stopped short or a fetch refused a corrupt segment, ConfigError (2) for a restore
    point not reached, the fetch's code for another refused file, RestoreFailed (4) otherwise.
    """
    try:
        start_server(ctx, source, manifest, directory, result)
        wait_for_recovery(source, directory, result)
    except OpskitError:
        if NOT_REACHED not in read_log(directory, result.log_start):
            raise
        check_not_reached(chain, result)
        what = "no transaction" if result.target.time is not None else "no WAL"
        result.note = f"the archive holds {what} after {result.target.describe()}: recovered to its end"
        # Recovery resumes from its last restartpoint, now without the target.
        retarget_to_end(directory)
        result.started = False
        start_server(ctx, source, manifest, directory, result)
        wait_for_recovery(source, directory, result)
    if result.note is not None or result.target == RecoveryTarget():
        check_reached(chain, result)
