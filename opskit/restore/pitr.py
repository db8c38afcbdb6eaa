"""``opskit restore --pitr``: a base backup plus archived WAL, recovered by PostgreSQL to a chosen moment.

Order of work, and why:

1. Decide before touching anything (pure :func:`choose_base`): the newest base backup that
   is consistent before the target (its stop time for ``--to-time``, its stop LSN for
   ``--to-lsn``; the newest for ``--to-name`` and ``--latest``), and check that the archive
   holds the last WAL segment it needs and WAL up to the target (a time after the newest
   archived WAL, an LSN past its end), so a hopeless restore fails in a second (exit 2);
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

import contextlib
import fcntl
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from opskit.catalog import Manifest, find_backup, format_time, latest_backup, list_backups
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import (
    ConfigError,
    LockHeld,
    OpskitError,
    RestoreFailed,
    UnreachableError,
    VerificationFailed,
)
from opskit.core.execute import run as run_command
from opskit.core.execute import spawn
from opskit.core.log import get_logger
from opskit.pg import connection, tools
from opskit.pipeline import grow_pipe
from opskit.plan import timeline
from opskit.restore.reader import open_backup
from opskit.wal import archive, layout, readahead
from opskit.wal import chain as wal_chain
from opskit.wal.archive import newest_archived

log = get_logger(__name__)

RECOVERY_WAIT_SECONDS = 3600
FIRST_SEGMENT_WAIT_SECONDS = 30
READER_EXIT_SECONDS = 5
REACHABLE_HINT = "pick a moment inside it ('opskit wal covers MOMENT' answers), or --latest for the archive's end"
NOT_REACHED = "recovery ended before configured recovery target was reached"
# PostgreSQL's FATAL when restore_command exits above 125 (xlogarchive.c, RestoreArchivedFile):
# the file named is one ``wal fetch`` refused (exit 128 + its opskit code).
FETCH_REFUSED = re.compile(
    r'could not restore file "(?P<name>[^"]+)" from archive: child process exited with exit code (?P<code>\d+)'
)
FETCH_ERROR = "opskit: error: "  # how the fetch's one error line begins (its stderr goes to the server log)
SERVER_FATAL = re.compile(r"\b(?:FATAL|PANIC):")
# The time and LSN targets in postgresql.auto.conf, cleared to recover to the archive's end.
TARGET_LINE = re.compile(r"^(recovery_target_(?:time|lsn))\s*=.*$", re.MULTILINE)

AUTO_CONF = "postgresql.auto.conf"
RECOVERY_LOG = "opskit-recovery.log"  # the started server's log (pg_ctl -l), in its data directory
# opskit's recovery settings in postgresql.auto.conf sit between these lines; the next restore replaces them.
SETTINGS_BEGIN = "# opskit restore --pitr: recovery settings (begin; the next restore replaces this block)"
SETTINGS_END = "# opskit restore --pitr: recovery settings (end)"
# Every recovery target setting (PostgreSQL 15): all written, the unused ones as ''.
TARGET_SETTINGS = (
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
)
ARCHIVING_OFF = (
    "archiving is off in the restored copy (archive_mode = 'off' in postgresql.auto.conf), so it cannot write "
    "into the archive it came from; to make it a primary that archives, point archive_command at a target of "
    "its own, then run ALTER SYSTEM RESET archive_mode and restart it"
)


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: one of a time, an LSN, a restore point name, or the end of the archive."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.time, self.lsn, self.name) if v is not None]
        if len(given) > 1:
            raise ConfigError("give one of --to-time, --to-lsn, --to-name or --latest")
        if self.lsn is not None:
            try:
                layout.parse_lsn(self.lsn)
            except ValueError as exc:
                raise ConfigError(f"--to-lsn: {exc}") from exc

    def settings(self) -> dict[str, str]:
        """Return the ``recovery_target_*`` settings for this target ({} for the end of the archive)."""
        if self.time is not None:
            # PostgreSQL reads a timestamptz literal: "2026-12-01 14:59:00.000000+00", not ISO's "T...Z".
            return {"recovery_target_time": self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        if self.name is not None:
            return {"recovery_target_name": self.name}
        return {}

    def describe(self) -> str:
        """Return the target in words, for messages."""
        if self.time is not None:
            return f"time {format_time(self.time)}"
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        if self.name is not None:
            return f"restore point '{self.name}'"
        return "the end of the archived WAL"


@dataclass
class PitrResult:
    """A restored data directory, the base backup it came from and, after ``--start``, the point recovery reached."""

    manifest: Manifest
    pgdata: str
    target: RecoveryTarget
    started: bool = False
    port: int | None = None
    replay_lsn: str | None = None
    last_transaction_time: datetime | None = None
    timeline: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # how the target was reached when not as asked (the archive's end)
    log_start: int = 0  # where the latest start's lines begin in the server log

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the result."""
        return {
            "backup": self.manifest.id,
            "pgdata": self.pgdata,
            "target": self.target.describe(),
            "started": self.started,
            "port": self.port,
            "replay_lsn": self.replay_lsn,
            "last_transaction_time": format_time(self.last_transaction_time) if self.last_transaction_time else None,
            "timeline": self.timeline,
            "note": self.note,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "archiving": ARCHIVING_OFF,  # what to do before the copy can archive as a new primary
        }


@dataclass(frozen=True)
class PitrWindow:
    """The moments a target can be recovered to: its oldest base backup's consistent point .. its newest WAL.

    ``end`` is when the newest archived segment reached the storage (what ``status`` shows as
    the end of the window); ``newest_segment`` is that segment's name.
    """

    start: datetime
    end: datetime
    newest_segment: str

    def contains(self, moment: datetime) -> bool:
        """Return True when ``moment`` lies inside the window (both ends included)."""
        return self.start <= moment <= self.end

    def describe(self) -> str:
        """Return ``<start> .. <end>`` for messages."""
        return f"{format_time(self.start)} .. {format_time(self.end)}"


def pitr_window(store: Any, target: str, backups: Sequence[Manifest], now: datetime) -> PitrWindow | None:
    """Return the PITR window of ``target`` in ``store``, or None without a base backup or archived WAL.

    ``backups`` are the target's backups of any kind; future-dated ones are left out.
    Raises StorageError when the archive cannot be listed.
    """
    bases = [m for m in timeline.present(backups, now) if m.kind == "base"]
    newest = newest_archived(store, target) if bases else None
    if not bases or newest is None:
        return None
    return PitrWindow(start=min(m.snapshot_time for m in bases), end=newest[1], newest_segment=newest[0])


@dataclass(frozen=True)
class Coverage:
    """Whether point-in-time recovery can reach ``moment`` on a target, and the window that says so."""

    target: str
    moment: datetime
    window: PitrWindow | None

    @property
    def covered(self) -> bool:
        """Return True when the moment lies inside the PITR window."""
        return self.window is not None and self.window.contains(self.moment)

    def describe(self) -> str:
        """Return one line for people: covered, or why not."""
        when = format_time(self.moment)
        if self.window is None:
            return f"target '{self.target}' has no base backup with archived WAL: {when} is not recoverable by PITR"
        verdict = "inside" if self.covered else "outside"
        return f"{when} is {verdict} the PITR window of target '{self.target}' ({self.window.describe()})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "target": self.target,
            "moment": format_time(self.moment),
            "covered": self.covered,
            "window": None
            if self.window is None
            else {"start": format_time(self.window.start), "end": format_time(self.window.end)},
        }


def coverage(ctx: AppContext, target: str | None, moment: datetime) -> Coverage:
    """Return whether ``moment`` is inside ``target``'s PITR window in its primary storage.

    Raises ConfigError for an unknown target, StorageError when the storage cannot be read.
    """
    source = ctx.target(target)
    store = ctx.storage(source.primary_storage)
    window = pitr_window(store, source.name, list_backups(store, source.name), ctx.clock())
    return Coverage(target=source.name, moment=moment, window=window)


def choose_base(backups: Sequence[Manifest], target: RecoveryTarget, now: datetime) -> Manifest | None:
    """Return the base backup to recover ``target`` from: the newest consistent before it, or None.

    ``backups`` may hold both kinds, newest first; logical and future-dated ones are skipped.
    """
    bases = [m for m in backups if m.kind == "base"]
    if target.time is not None:
        moment = target.time
        bases = [m for m in bases if m.snapshot_time <= moment]
    elif target.lsn is not None:
        lsn = layout.parse_lsn(target.lsn)
        bases = [m for m in bases if layout.parse_lsn(str(m.base.get("stop_lsn", "0/0"))) <= lsn]
    return latest_backup(bases, now)


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
        size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
        check_reachable(recovery, window, size, hint=REACHABLE_HINT)
    # Listed now, before the server starts: WAL archived later is not what recovery had to reach.
    chain = archived_chain(ctx, source.name, storage or source.primary_storage, manifest)
    check_no_gap(chain, recovery)
    restore_command(ctx, source, opskit_command, storage)  # no config file: refused before anything is written
    result = PitrResult(manifest=manifest, pgdata=str(directory), target=recovery)
    log.info("pitr restore started", target=source.name, backup_id=manifest.id, to=recovery.describe())
    began = time.monotonic()
    extract(ctx, store, manifest, directory)
    result.phases["extract"] = time.monotonic() - began
    write_recovery_settings(directory, restore_command(ctx, source, opskit_command, storage), recovery, manifest.id)
    give_to_server_user(directory)
    if start:
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
    log.info("pitr restore done", backup_id=manifest.id, pgdata=str(directory), started=result.started)
    return result


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


@dataclass
class _Claim:
    """An open descriptor of a claimed data directory (its ``flock`` is the lock) and whether opskit created it."""

    fd: int
    created: bool


# Data directories this process restores into, by resolved path. The lock lasts until
# release_directory() or the end of the process (restore --pitr is one run per process).
_CLAIMS: dict[Path, _Claim] = {}


def empty_directory(pgdata: str) -> Path:
    """Return ``pgdata`` resolved, created (mode 0700) when absent, empty and locked for this process.

    The lock is an exclusive ``flock`` on the directory itself, taken before the empty check:
    of two restores into one directory, the second stops here having written nothing (the
    directory holds no lock file either, so nothing is left for the server or a later base
    backup to carry). Raises LockHeld (7) when another run holds it, ConfigError (2) when it
    is not an empty directory (saying what it holds) or its path cannot be given to the server.
    """
    path = Path(pgdata).resolve()
    check_server_path(path, "--pgdata")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--pgdata '{pgdata}' is not a directory", hint="give a new or empty directory")
    created = False
    if not path.exists():
        try:
            path.mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            pass  # a concurrent run made it: the lock decides which of the two goes on
    claim = _Claim(_lock_directory(path, pgdata), created)
    try:
        if any(path.iterdir()):
            message, hint = describe_leftovers(path)
            raise ConfigError(f"--pgdata '{pgdata}' is not an empty directory: {message}", hint=hint)
        path.chmod(0o700)  # the server refuses a data directory others can read
    except BaseException:
        os.close(claim.fd)
        raise
    _CLAIMS[path] = claim
    return path


def _lock_directory(path: Path, pgdata: str) -> int:
    """Return an open descriptor of ``path`` holding its exclusive ``flock``. Raises LockHeld (7) when taken."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # O_CLOEXEC (PEP 446): the server does not inherit it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockHeld(
            f"another opskit run is restoring into --pgdata '{pgdata}'; this one wrote nothing",
            hint="wait for it to finish, or give another directory",
        ) from None
    return fd


def release_directory(directory: Path) -> None:
    """Release the lock :func:`empty_directory` took on ``directory`` (nothing when it holds none)."""
    claim = _CLAIMS.pop(directory.resolve(), None)
    if claim is not None:
        os.close(claim.fd)


def describe_leftovers(path: Path) -> tuple[str, str]:
    """Return (what the non-empty directory ``path`` holds, what to do about it), for the refusal."""
    remove = f"remove it ({shlex.join(['rm', '-r', str(path)])}) and restore again, or give another directory"
    if (path / "postmaster.pid").exists():
        return (
            "a server may be running from it (postmaster.pid)",
            f"stop it ({shlex.join(['pg_ctl', '-D', str(path), 'stop'])}); then {remove}",
        )
    if (path / "recovery.signal").exists() and SETTINGS_BEGIN in _read_text(path / AUTO_CONF):
        return "it holds an interrupted or failed opskit restore --pitr (recovery never finished)", remove
    if (path / "PG_VERSION").exists():
        return "it holds a PostgreSQL data directory", "give a new or empty directory"
    return f"it holds {sum(1 for _ in path.iterdir())} entries", "give a new or empty directory"


# pg_ctl hands -D, -l and -o to /bin/sh inside double quotes (pg_ctl.c, start_postmaster):
# these characters would be expanded or end the quoting there, and no quoting of ours helps.
_SHELL_UNSAFE = ('"', "$", "`", "\\", "\n")


def check_server_path(path: Path, option: str) -> None:
    """Raise ConfigError (2) when ``path`` holds a character pg_ctl cannot pass to the server (spaces and ' are fine)."""
    bad = sorted({c for c in _SHELL_UNSAFE if c in str(path)})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise ConfigError(
            f"{option} '{path}' contains {shown}, which pg_ctl cannot pass to the server",
            hint="choose a path without \" $ ` \\ or a newline (spaces and ' are fine)",
        )


def _read_text(path: Path) -> str:
    """Return the text of ``path`` ("" when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


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


def extract(ctx: AppContext, store: Any, manifest: Manifest, directory: Path) -> None:
    """Stream the base backup's tar into ``tar -x`` in ``directory``. Raises RestoreFailed/VerificationFailed.

    When it fails or is interrupted, what it extracted is removed: the directory is left as
    it was found (entries there before are kept; the directory itself goes when
    :func:`empty_directory` created it), so a retry into it is not refused for leftovers.
    """
    before = set(os.listdir(directory))
    try:
        backup = open_backup(ctx, store, manifest)
        backup.check_can_decrypt()
        argv = ["tar", "-x", "-C", str(directory), "-f", "-"]
        with spawn(argv, stdin=subprocess.PIPE) as child:
            grow_pipe(child.stdin)  # 1 MiB instead of 64 KiB: 628 MiB of tar extracted in 1.8-2.2 s instead of 2.3-2.6
            try:
                backup.read("db", child.stdin)
            finally:
                child.stdin.close()
            child.check(RestoreFailed, f"extracting base backup {manifest.id} into '{directory}' failed")
    except BaseException:
        _remove_extracted(directory, before)
        raise


def _remove_extracted(directory: Path, before: set[str]) -> None:
    """Remove the entries of ``directory`` not in ``before``, and the directory when opskit created it and it is empty."""
    for name in set(os.listdir(directory)) - before:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    claim = _CLAIMS.get(directory.resolve())
    if claim is not None and claim.created and not before:
        with contextlib.suppress(OSError):  # not empty after all: leave it
            directory.rmdir()


def recovery_settings(restore_command: str, target: RecoveryTarget) -> dict[str, str]:
    """Return every setting opskit writes for a recovery to ``target``, in the order they must be written.

    Every ``recovery_target*`` is given, the unused ones as '' (PostgreSQL reads '' as "not
    set"), so a line an earlier recovery left in postgresql.auto.conf, which comes along in
    every base backup of a promoted copy, cannot change this one: of a setting given twice
    the server applies only the last line. The empty ones come first: PostgreSQL's check
    for "multiple recovery targets specified" runs as each line is applied, and an empty
    target applied after the chosen one would trip it.
    """
    chosen = target.settings()
    settings = {"restore_command": restore_command}
    settings |= {name: "" for name in TARGET_SETTINGS if name not in chosen}
    settings |= chosen
    settings |= {
        "recovery_target_inclusive": "on",
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        # The copy must not archive into the archive it recovers from (its new timeline would
        # mix with the source's WAL): ARCHIVING_OFF says how to turn it on once it is a primary.
        "archive_mode": "off",
    }
    return settings


def write_recovery_settings(directory: Path, restore_command: str, target: RecoveryTarget, backup_id: str) -> None:
    """Write opskit's recovery block into ``postgresql.auto.conf``, create ``recovery.signal``; prepare the directory.

    The block (between SETTINGS_BEGIN and SETTINGS_END) replaces the one an earlier
    restore wrote, and lists every setting of :func:`recovery_settings`. The previous
    recovery's server log (RECOVERY_LOG, carried by a base backup of a restored copy) is
    removed, so the log read after this recovery is this recovery's alone: pg_basebackup
    cannot leave a file out, and dropping it from the tar would break backup_manifest.
    Raises OSError when the directory cannot be written.
    """
    conf = directory / AUTO_CONF
    kept = without_settings_block(_read_text(conf))
    if kept and not kept.endswith("\n"):
        kept += "\n"
    lines = [SETTINGS_BEGIN, f"# base backup {backup_id}, recovering to {target.describe()}"]
    lines += [f"{key} = {quote_setting(value)}" for key, value in recovery_settings(restore_command, target).items()]
    lines.append(SETTINGS_END)
    partial = conf.with_name(f".{AUTO_CONF}.opskit")
    partial.write_text(kept + "\n".join(lines) + "\n", encoding="utf-8")
    partial.chmod(0o600)
    os.replace(partial, conf)  # all or nothing: a half-written block would be read by the server
    (directory / RECOVERY_LOG).unlink(missing_ok=True)
    (directory / "recovery.signal").touch()


def without_settings_block(text: str) -> str:
    """Return postgresql.auto.conf's ``text`` without opskit's recovery blocks (a block not closed is kept)."""
    out: list[str] = []
    block: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if block is None and line.strip() == SETTINGS_BEGIN:
            block = [line]
        elif block is not None:
            block.append(line)
            if line.strip() == SETTINGS_END:
                block = None
        else:
            out.append(line)
    return "".join(out + (block or []))


def quote_setting(value: str) -> str:
    """Return ``value`` as a quoted string of a PostgreSQL configuration file ('' and \\ escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


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


def server_user() -> pwd.struct_passwd | None:
    """Return the user the server runs as when opskit runs as root (PostgreSQL refuses root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ConfigError("running as root, restore --pitr needs a 'postgres' user to own the data directory") from exc


def give_to_server_user(directory: Path) -> None:
    """Make ``directory`` and everything in it the server user's when opskit runs as root (else nothing)."""
    user = server_user()
    if user is None:
        return
    for dirpath, _dirs, files in os.walk(directory):
        os.chown(dirpath, user.pw_uid, user.pw_gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def as_server_user(argv: list[str]) -> list[str]:
    """Return ``argv`` run as the server user (``runuser``) when opskit runs as root, else unchanged."""
    user = server_user()
    return ["runuser", "-u", user.pw_name, "--", *argv] if user is not None else argv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_tool(ctx: AppContext, source: TargetConfig, manifest: Manifest, name: str) -> tools.Tool:
    """Return the ``name`` binary of the base backup's own major (a server runs only its own major's data).

    Raises UnreachableError (3) when only other majors' binaries are installed.
    """
    major = int(manifest.server.get("major") or 0)
    bin_dir = source.pg_bin_dir or ctx.config.tools.pg_bin_dir
    tool = tools.find_tool(name, major, bin_dir)
    if tool.major != major:
        raise UnreachableError(
            f"the base backup is of PostgreSQL {major}; only {name} {tool.version} was found",
            hint=f"install postgresql-{major} (the server binaries) or set tools.pg_bin_dir",
        )
    return tool


def start_server(
    ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path, result: PitrResult
) -> None:
    """Start the restored server of the backup's major on a free loopback port; record the port in ``result``.

    Raises UnreachableError (3) without that major's pg_ctl, RestoreFailed (4) when it does not start.
    """
    pg_ctl = server_tool(ctx, source, manifest, "pg_ctl")
    port = _free_port()
    log_file = directory / RECOVERY_LOG
    options = server_options(port, directory)
    argv = [pg_ctl.path, "-D", str(directory), "-o", options, "-l", str(log_file), "-w", "-t", "600", "start"]
    result.log_start = _log_size(directory)
    started = run_command(as_server_user(argv), timeout=660)
    if started.returncode != 0:
        output = (started.stdout + started.stderr).decode("utf-8", "replace")
        raise server_failure("the recovered server did not start", directory, result, output)
    result.started, result.port = True, port


def server_options(port: int, directory: Path) -> str:
    """Return pg_ctl's ``-o``: the restored server's settings, each quoted for the shell pg_ctl hands it to.

    ``unix_socket_directories`` is a list: the directory goes in double quotes, so a space or
    a comma in the path stays part of it.
    """
    settings = {
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": '"' + str(directory).replace('"', '""') + '"',
        "lc_messages": "C",  # English messages: the drill reads where recovery stopped from this server's log
    }
    return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())


@contextlib.contextmanager
def stopped_when_interrupted(
    ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path
) -> Iterator[None]:
    """Stop the server started in ``directory`` when the block is interrupted (Ctrl-C, SIGTERM), then re-raise.

    pg_ctl starts the server in a session of its own, so Ctrl-C does not reach it: without
    this an interrupted restore leaves it recovering and promoting behind the exit 130. Logs
    a warning saying what is left in the directory.
    """
    try:
        yield
    except KeyboardInterrupt:
        with _signals_held():  # a second Ctrl-C must not cut the shutdown short
            stopped = stop_after_interrupt(ctx, source, manifest, directory)
        where = shlex.quote(str(directory))
        if stopped:
            log.warning(
                f"interrupted: the server recovering in {where} was stopped; the directory holds a copy that "
                f"has not finished recovering: remove it (rm -r {where}) before restoring again, or give another"
            )
        else:
            log.warning(
                f"interrupted: the server in {where} did not stop; stop it with "
                f"{shlex.join(as_server_user(['pg_ctl', '-D', str(directory), '-m', 'immediate', 'stop']))}"
            )
        raise


def stop_after_interrupt(ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path) -> bool:
    """Stop the server of ``directory`` if it runs: fast shutdown, then immediate; return True once it is down."""
    pid_file = directory / "postmaster.pid"
    if not pid_file.exists() and (directory / RECOVERY_LOG).exists():
        # pg_ctl was cut short after it launched the server (it opens the log first): the
        # server writes postmaster.pid in a moment.
        deadline = time.monotonic() + 3
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    if not pid_file.exists():
        return True
    pg_ctl = server_tool(ctx, source, manifest, "pg_ctl").path
    for mode, wait in (("fast", 30), ("immediate", 30)):
        argv = as_server_user([pg_ctl, "-D", str(directory), "-m", mode, "-w", "-t", str(wait), "stop"])
        try:
            run_command(argv, timeout=wait + 10)
        except OpskitError as exc:
            log.warning("pg_ctl stop failed", mode=mode, error=exc.message)
        if not pid_file.exists():
            return True
    return False


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (only the main thread may change handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def server_target(source: TargetConfig, port: int) -> TargetConfig:
    """Return ``source`` pointed at the restored server on 127.0.0.1:``port`` (same role and database)."""
    return replace(source, dsn=connection.conninfo(source, "postgres") + f" host=127.0.0.1 port={port}")


def wait_for_recovery(source: TargetConfig, directory: Path, result: PitrResult) -> None:
    """Wait until the started server has promoted; record the replay LSN, last transaction time and timeline.

    Raises RestoreFailed (4) when the server stops during recovery or recovery outlasts the wait.
    """
    assert result.port is not None
    server = server_target(source, result.port)
    deadline = time.monotonic() + RECOVERY_WAIT_SECONDS
    while True:
        try:
            with connection.connect(server, autocommit=True, application_name="opskit pitr") as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(),"
                    " (SELECT timeline_id FROM pg_control_checkpoint())"
                ).fetchone()
        except (psycopg.Error, UnreachableError):
            row = None
        if row is not None and not row[0]:
            result.replay_lsn, result.last_transaction_time, result.timeline = row[1], row[2], row[3]
            return
        if not (directory / "postmaster.pid").exists():
            raise server_failure(f"recovery to {result.target.describe()} failed", directory, result)
        if time.monotonic() > deadline:
            reason = log_tail(read_log(directory, result.log_start))
            raise RestoreFailed(f"recovery did not finish within {RECOVERY_WAIT_SECONDS} s: {reason}")
        time.sleep(0.2)


def stop_server(ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path) -> bool:
    """Stop the server running from ``directory`` (fast shutdown) and return True once it is down.

    A server that is not running counts as stopped. Raises UnreachableError (3) without pg_ctl.
    """
    if not (directory / "postmaster.pid").exists():
        return True
    pg_ctl = server_tool(ctx, source, manifest, "pg_ctl")
    stopped = run_command(
        as_server_user([pg_ctl.path, "-D", str(directory), "-m", "fast", "-w", "-t", "120", "stop"]), timeout=180
    )
    return stopped.returncode == 0 or not (directory / "postmaster.pid").exists()


def log_tail(text: str, lines: int = 3) -> str:
    """Return why a server log says the server stopped, for one-line errors ("" for an empty log).

    That is its last FATAL or PANIC line (PostgreSQL's reason; the lines after it are the
    shutdown), from the level on; without one, its last non-empty ``lines`` joined by ' | '.
    """
    all_lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(all_lines):
        match = SERVER_FATAL.search(line)
        if match is not None:
            return " ".join(line[match.start() :].split())
    return " | ".join(all_lines[-lines:])


def read_log(directory: Path, since: int = 0) -> str:
    """Return the restored server's log from byte ``since`` on ("" when it cannot be read)."""
    try:
        with open(directory / RECOVERY_LOG, "rb") as log_file:
            log_file.seek(since)
            return log_file.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _log_size(directory: Path) -> int:
    try:
        return (directory / RECOVERY_LOG).stat().st_size
    except OSError:
        return 0


def server_failure(what: str, directory: Path, result: PitrResult, output: str = "") -> OpskitError:
    """Return the error for a restored server that stopped while recovering (or did not start), from its log.

    A WAL file ``wal fetch`` refused (PostgreSQL: restore_command exited above 125, so it
    aborted recovery) gives the fetch's own class (exit code - 128: 5 a corrupt object,
    3 unreachable, 2 configuration, else 4), naming the file and the fetch's error line; the
    data directory is left still recovering, and a start continues it. Anything else is
    RestoreFailed (4) carrying the log's FATAL or PANIC line (:func:`log_tail`), else ``output``.
    """
    text = read_log(directory, result.log_start)
    matches = list(FETCH_REFUSED.finditer(text))
    refused = matches[-1] if matches else None
    if refused is not None:
        name, code = refused["name"], int(refused["code"])
        said = [line for line in text[: refused.start()].splitlines() if FETCH_ERROR in line]
        cause = said[-1].split(FETCH_ERROR, 1)[1].strip() if said else f"exit {code}"
        kind: type[OpskitError] = {2: ConfigError, 3: UnreachableError, 5: VerificationFailed}.get(
            code - archive.ABORT_EXIT_BASE, RestoreFailed
        )
        return kind(
            f"recovery to {result.target.describe()} stopped at WAL file {name}: wal fetch refused it: {cause}",
            hint=f"recovery cannot pass it; the data directory '{directory}' is left still recovering: once "
            f"'opskit wal fetch {name} <file>' succeeds, 'pg_ctl -D {directory} start' continues the recovery",
        )
    reason = log_tail(text) or " ".join(output.split()) or "no server log"
    return RestoreFailed(f"{what}: {reason}", hint=f"the data directory is left at '{directory}' to look at")


@dataclass(frozen=True)
class ArchivedChain:
    """The WAL a recovery from one base backup must replay, as the archive held it before the server started.

    ``newest`` is the chain's newest archived segment (None: none), ``missing`` the first
    segments of the chain the archive lacks (:mod:`opskit.wal.chain`, oldest first);
    ``switches`` holds (timeline, first segment number after it) for each timeline the chain
    leaves, oldest first, so :meth:`name_of` names a segment on the timeline recovery reads.
    """

    backup_id: str
    newest: str | None
    missing: tuple[str, ...]
    segment_size: int
    newest_timeline: int
    switches: tuple[tuple[int, int], ...] = ()

    def number(self, name: str) -> int:
        """Return the segment number of segment ``name``."""
        return layout.segment_number(name, self.segment_size)[1]

    def name_of(self, number: int) -> str:
        """Return the name of segment ``number`` on the timeline the chain has there."""
        timeline = next((t for t, end in self.switches if number < end), self.newest_timeline)
        return layout.segment_name(timeline, number * self.segment_size, self.segment_size)

    def lacking_up_to(self, last: int | None = None) -> str | None:
        """Return the first segment the archive lacks, up to segment number ``last`` (None: the newest)."""
        return next((m for m in self.missing if last is None or self.number(m) <= last), None)

    def shortfall(self, replayed: int, required: int | None = None) -> tuple[str, bool] | None:
        """Return (the first segment recovery had to replay after segment ``replayed``, whether the archive lacks it).

        ``required`` is the segment number recovery had to reach (None: the chain's newest).
        None when it did reach it.
        """
        if self.newest is None:
            return None
        # Never past the newest: the archive holds nothing after it to have replayed.
        required = self.number(self.newest) if required is None else min(required, self.number(self.newest))
        if replayed >= required:
            return None
        lacking = next((m for m in self.missing if self.number(m) > replayed), None)
        if lacking is not None and self.number(lacking) <= required:
            return lacking, True
        return self.name_of(replayed + 1), False


def archived_chain(ctx: AppContext, target: str, storage: str, manifest: Manifest) -> ArchivedChain:
    """Return the WAL chain of base backup ``manifest`` in ``storage`` (:func:`opskit.wal.chain.check`).

    Raises StorageError when the archive cannot be listed or read.
    """
    report = wal_chain.check(ctx, target=target, storage=storage)
    found = next((c for c in report.chains if c.backup_id == manifest.id), None)
    size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
    first = str(manifest.base.get("wal_start") or "")
    first_timeline = layout.segment_number(first, size)[0] if layout.is_segment_name(first) else 1
    newest = found.newest if found is not None else None
    missing = found.missing if found is not None else ()
    newest_timeline = layout.segment_number(newest, size)[0] if newest else first_timeline
    switches: tuple[tuple[int, int], ...] = ()
    if newest_timeline > first_timeline:
        data = archive.read_wal(ctx, ctx.storage(storage), target, f"{newest_timeline:08X}.history")
        entries = wal_chain.parse_history(data.decode("utf-8", "replace")) if data is not None else []
        switches = tuple((parent, lsn // size) for parent, lsn in entries if parent >= first_timeline)
    return ArchivedChain(manifest.id, newest, tuple(missing), size, newest_timeline, switches)


def check_no_gap(chain: ArchivedChain, target: RecoveryTarget) -> None:
    """Raise VerificationFailed (5) before anything is extracted when a recovery to the archive's end would stop at a gap."""
    lacking = chain.lacking_up_to()
    if target != RecoveryTarget() or lacking is None:
        return
    start = chain.number(lacking) * chain.segment_size
    raise VerificationFailed(
        f"the WAL of base backup {chain.backup_id} has a gap: segment {lacking} is missing from the archive, so "
        f"recovery to {target.describe()} (newest segment {chain.newest}) would stop there",
        hint=f"to recover what precedes the gap pass --to-lsn {layout.format_lsn(start)}; take a new base backup "
        "now and check archive_command ('opskit wal verify' lists the gaps)",
    )


def check_reachable(target: RecoveryTarget, window: PitrWindow, segment_size: int, hint: str) -> None:
    """Raise ConfigError (2) when ``target`` lies outside ``window``: a time, or an LSN past the newest segment's end.

    Decided from the archive's listing, before anything is fetched. A restore point cannot
    be checked so: its name is inside the WAL.
    """
    if target.time is not None and not window.contains(target.time):
        raise ConfigError(
            f"--to-time {format_time(target.time)} is outside the PITR window ({window.describe()})", hint=hint
        )
    if target.lsn is not None:
        _timeline, number = layout.segment_number(window.newest_segment, segment_size)
        end = (number + 1) * segment_size
        if layout.parse_lsn(target.lsn) > end:
            raise ConfigError(
                f"--to-lsn {target.lsn} is past the end of the archived WAL ({layout.format_lsn(end)}, the end of "
                f"segment {window.newest_segment}; window {window.describe()})",
                hint=hint,
            )


def _required_segment(target: RecoveryTarget, segment_size: int) -> int | None:
    """Return the segment number a recovery to ``target`` past the archive's end must reach (None: the newest)."""
    if target.lsn is None:
        return None
    return max(layout.parse_lsn(target.lsn) - 1, 0) // segment_size


def check_reached(chain: ArchivedChain, result: PitrResult) -> None:
    """Raise VerificationFailed (5) when a recovery that ran to the end of its WAL stopped short of the archive.

    The end is the chain's newest segment (an LSN target: the segment holding it); a segment
    after the one replay stopped in that the archive lacks is a gap, one it holds was refused.
    """
    lsn = layout.parse_lsn(result.replay_lsn or "0/0")
    replayed = (lsn - 1) // chain.segment_size  # the LSN is where the next record would begin
    short = chain.shortfall(replayed, _required_segment(result.target, chain.segment_size))
    if short is None:
        return
    name, lacking = short
    why = "is missing from the archive (a gap)" if lacking else "is archived but was not replayed"
    start = layout.format_lsn(chain.number(name) * chain.segment_size)
    raise VerificationFailed(
        f"recovery to {result.target.describe()} ended at LSN {result.replay_lsn}, short of the archived WAL "
        f"(newest segment {chain.newest}): segment {name} {why}",
        hint=f"the data recovered stops before {start}; "
        + (
            f"to keep it pass --to-lsn {start}; take a new base backup now ('opskit wal verify' lists the gaps)"
            if lacking
            else f"run 'opskit wal fetch {name} <file>' to see why it cannot be fetched, fix that and restore again"
        ),
    )


def _check_not_reached(chain: ArchivedChain, result: PitrResult) -> None:
    """After "recovery ended before configured recovery target was reached": raise unless the target lies at the archive's end.

    Raises VerificationFailed (5) when a gap before the target ended the WAL, ConfigError (2)
    for a restore point not in the WAL after the base backup.
    """
    target = result.target
    lacking = chain.lacking_up_to(_required_segment(target, chain.segment_size))
    if lacking is not None:
        raise VerificationFailed(
            f"recovery to {target.describe()} stopped at a gap: segment {lacking} is missing from the archive",
            hint=f"the WAL after it cannot be replayed from base backup {chain.backup_id}; pick a target before it, "
            "and take a new base backup now ('opskit wal verify' lists the gaps)",
        )
    if target.name is not None:
        raise ConfigError(
            f"restore point {target.name} was not reached from base backup {chain.backup_id}",
            hint=f"if it was created before {chain.backup_id}, pass an older backup: "
            f"opskit restore <older id> --pitr --to-name {shlex.quote(target.name)}",
        )


def retarget_to_end(directory: Path) -> None:
    """Clear the time and LSN targets in ``postgresql.auto.conf`` (written at once), so the next start recovers to the end.

    Raises OSError when the file cannot be written.
    """
    conf = directory / AUTO_CONF
    text = TARGET_LINE.sub(r"\g<1> = ''", _read_text(conf))
    partial = conf.with_name(f".{AUTO_CONF}.opskit")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(0o600)
    user = server_user()
    if user is not None:
        os.chown(partial, user.pw_uid, user.pw_gid)  # the server reads it
    os.replace(partial, conf)


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
        _check_not_reached(chain, result)
        what = "no transaction" if result.target.time is not None else "no WAL"
        result.note = f"the archive holds {what} after {result.target.describe()}: recovered to its end"
        # Recovery resumes from its last restartpoint, now without the target.
        retarget_to_end(directory)
        result.started = False
        start_server(ctx, source, manifest, directory, result)
        wait_for_recovery(source, directory, result)
    if result.note is not None or result.target == RecoveryTarget():
        check_reached(chain, result)
