"""``opskit restore --pitr``: a base backup plus archived WAL, recovered by PostgreSQL to a chosen moment.

Order of work, and why:

1. Decide before touching anything (pure :func:`choose_base`): the newest base backup that
   is consistent before the target (its stop time for ``--to-time``, its stop LSN for
   ``--to-lsn``; the newest for ``--to-name`` and ``--latest``), and check that the archive
   holds the last WAL segment it needs, so a hopeless restore fails in a second (exit 2).
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
"""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from opskit.catalog import Manifest, find_backup, format_time, latest_backup, list_backups
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, RestoreFailed, UnreachableError
from opskit.core.execute import run as run_command
from opskit.core.execute import spawn
from opskit.core.log import get_logger
from opskit.pg import connection, tools
from opskit.pipeline import grow_pipe
from opskit.plan import timeline
from opskit.restore.reader import open_backup
from opskit.wal import archive, layout, readahead
from opskit.wal.archive import newest_archived

log = get_logger(__name__)

RECOVERY_WAIT_SECONDS = 3600
FIRST_SEGMENT_WAIT_SECONDS = 30
READER_EXIT_SECONDS = 5


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
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
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
    ConfigError (2) for a bad directory, target or missing backup/WAL, RestoreFailed (4)
    when extraction or recovery fails, VerificationFailed (5) when the stream's hashes differ.
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
    restore_command(ctx, source, opskit_command)  # no config file: refused before anything is written
    result = PitrResult(manifest=manifest, pgdata=str(directory), target=recovery)
    log.info("pitr restore started", target=source.name, backup_id=manifest.id, to=recovery.describe())
    began = time.monotonic()
    extract(ctx, store, manifest, directory)
    result.phases["extract"] = time.monotonic() - began
    write_recovery_settings(directory, restore_command(ctx, source, opskit_command), recovery, manifest.id)
    give_to_server_user(directory)
    if start:
        began = time.monotonic()
        reader = start_read_ahead(ctx, source, manifest, directory)
        start_server(ctx, source, manifest, directory, result)
        wait_for_recovery(source, directory, result)
        if reader is not None:
            reader.join(READER_EXIT_SECONDS)  # it removes pg_wal/opskit-prefetch as the server is ready
        result.phases["recovery"] = time.monotonic() - began
    log.info("pitr restore done", backup_id=manifest.id, pgdata=str(directory), started=result.started)
    return result


def restore_command(ctx: AppContext, source: TargetConfig, opskit_command: str | None = None) -> str:
    """Return the server's ``restore_command``: ``opskit --config <file> wal fetch --target <t> %f %p``.

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
    return archive.with_read_ahead(command + f" --target {shlex.quote(source.name)} %f %p")


def empty_directory(pgdata: str) -> Path:
    """Return ``pgdata`` resolved, created (mode 0700) when absent. Raises ConfigError when it is not empty."""
    path = Path(pgdata).resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"--pgdata '{pgdata}' is not an empty directory", hint="give a new or empty directory")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # the server refuses a data directory others can read
    return path


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
    """Stream the base backup's tar into ``tar -x`` in ``directory``. Raises RestoreFailed/VerificationFailed."""
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


def write_recovery_settings(directory: Path, restore_command: str, target: RecoveryTarget, backup_id: str) -> None:
    """Append the recovery settings to ``postgresql.auto.conf`` and create ``recovery.signal``."""
    settings = {
        "restore_command": restore_command,
        **target.settings(),
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        # The copy must not archive into the archive it recovers from (its new timeline would
        # mix with the source's WAL): turn archiving back on once it is the new primary.
        "archive_mode": "off",
    }
    lines = [f"\n# opskit restore --pitr of backup {backup_id} to {target.describe()}\n"]
    lines += [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n" for key, value in settings.items()]
    with open(directory / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.writelines(lines)
    (directory / "recovery.signal").touch()


def start_read_ahead(
    ctx: AppContext, source: TargetConfig, manifest: Manifest, directory: Path
) -> threading.Thread | None:
    """Start reading the backup's WAL into ``pg_wal/opskit-prefetch`` in this process, before the server asks.

    The server about to start in ``directory`` then finds its first segments (and the answer
    to its first history probe) ready, instead of waiting for a fetch to start an interpreter
    (``opskit.wal.readahead``). Best effort: without it the server's fetches do it all.
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
    storage = archive.archive_storage(ctx, source)

    def read(name: str) -> bytes | None:
        return archive.archived_wal(ctx, storage, source.name, name)

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
    log_file = directory / "opskit-recovery.log"
    # English messages: the drill reads where recovery stopped from this server's log.
    options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} -c lc_messages=C"
    argv = [pg_ctl.path, "-D", str(directory), "-o", options, "-l", str(log_file), "-w", "-t", "600", "start"]
    started = run_command(as_server_user(argv), timeout=660)
    if started.returncode != 0:
        raise RestoreFailed(
            f"the recovered server did not start: {log_tail(log_file)}",
            hint=f"the data directory is left at '{directory}' to look at",
        )
    result.started, result.port = True, port


def server_target(source: TargetConfig, port: int) -> TargetConfig:
    """Return ``source`` pointed at the restored server on 127.0.0.1:``port`` (same role and database)."""
    return replace(source, dsn=connection.conninfo(source, "postgres") + f" host=127.0.0.1 port={port}")


def wait_for_recovery(source: TargetConfig, directory: Path, result: PitrResult) -> None:
    """Wait until the started server has promoted; record the replay LSN, last transaction time and timeline.

    Raises RestoreFailed (4) when the server stops during recovery or recovery outlasts the wait.
    """
    assert result.port is not None
    log_file = directory / "opskit-recovery.log"
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
            raise RestoreFailed(
                f"recovery to {result.target.describe()} failed: {log_tail(log_file)}",
                hint=f"the data directory is left at '{directory}' to look at",
            )
        if time.monotonic() > deadline:
            raise RestoreFailed(f"recovery did not finish within {RECOVERY_WAIT_SECONDS} s: {log_tail(log_file)}")
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


def log_tail(log_file: Path, lines: int = 3) -> str:
    """Return the last non-empty ``lines`` of a server log joined by ' | ' (for one-line errors)."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no server log"
    return " | ".join(line for line in text.splitlines()[-lines:] if line.strip())
