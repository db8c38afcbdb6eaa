"""``opskit drill restore --pitr``: prove the WAL archive recovers a moment, and measure how long it takes.

Order of work, and why:

1. Decide before touching anything: the PITR window (oldest base backup's consistent point
   .. the newest archived WAL, :func:`opskit.restore.pitr_model.pitr_window`), the moment (``--to-time``,
   ``--random-time``: uniform inside the window, or the archive's end), the base backup
   (:func:`opskit.restore.pitr_model.choose_base`). A moment outside the window is ConfigError (exit 2).
2. ``fetch``: stream the stored tar and check its size and sha256 (the logical drill's check).
3. ``extract``: the tar into a scratch data directory under ``[drill] scratch_dir`` (or the
   system's temp dir), then PostgreSQL's own ``backup_manifest`` from its stored artifact.
4. ``verifybackup``: ``pg_verifybackup --no-parse-wal`` on the copy *before* recovery changes
   it (the WAL comes from the archive, so pg_wal is empty). A failure is a failed check.
5. ``replay``: recovery settings (``archive_mode = off``: the scratch server never writes to
   the archive it reads), the server of the backup's major on a free loopback port, wait for
   the promotion (:func:`opskit.restore.pitr.recover`). When the archive holds no transaction
   after the moment, PostgreSQL stops with "recovery ended before configured recovery target
   was reached"; the state at the moment is then the archive's end, so the drill recovers to
   it and says so, but only when the replay reached the newest segment the archive held
   (a gap or a segment the fetch refused fails the drill, exit 5).
6. ``verify``: recovery reached the target; ``pg_amcheck --all --install-missing`` (heap and
   btree of every database); the logical drill's checks that apply to a physical copy
   (invalid indexes, unvalidated constraints, sequences, failed migrations, smoke queries).
   A base backup counts no rows, so row counts, fingerprints and object counts are skipped,
   with the reason in the report. (This phase is named ``verify`` like a logical drill's
   checks, so status and metrics read both kinds' RTO the same way.)
7. Stop the scratch server and remove its directory, unless ``--keep`` (or ``keep_on_failure``
   and a check failed); then write the reports and record the verdict like every drill.

The measured RTO is fetch + extract + verifybackup + replay + verify. The data-loss window
of a PITR drill is drill start - the newest archived WAL: what point-in-time recovery offers.
"""

from __future__ import annotations

import random
import re
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from opskit import catalog
from opskit.catalog import Check, Manifest
from opskit.config.drill import DrillSettings
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError, UnreachableError
from opskit.core.execute import run as run_command
from opskit.core.log import get_logger
from opskit.drill import checks, finish
from opskit.drill.result import DrillReport
from opskit.drill.timing import PhaseClock
from opskit.pg import connection, facts, tools
from opskit.restore import pitr, pitr_chain, pitr_directory, pitr_model, pitr_server, pitr_settings, server_user
from opskit.restore.pitr_model import PitrResult, PitrWindow, RecoveryTarget
from opskit.restore.reader import open_backup
from opskit.storage.base import Storage
from opskit.wal import archive, layout

log = get_logger(__name__)

SCRATCH = "scratch server"  # the report's staging target: no configured target is touched
BACKUP_MANIFEST = "backup_manifest"
NOT_REACHED = pitr.NOT_REACHED
RECOVERY_LOG = pitr_settings.RECOVERY_LOG  # the scratch server's log (pg_ctl -l), in its data directory
# PostgreSQL's line for where a targeted recovery stopped (xlogrecovery.c, recoveryStopsBefore and
# recoveryStopsAfter); the time is timestamptz_to_str's, e.g. "2026-12-02 04:54:49.04304+00".
STOPPING = re.compile(
    r"recovery stopping (?P<side>before|after) (?P<kind>commit|abort) of transaction (?P<xid>\d+), "
    r"time (?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::\d\d){0,2})$"
)
AMCHECK_TIMEOUT = 4 * 3600
OUTPUT_LINES = 5  # lines of a failing tool's output kept in a check
REACHED_TARGET = "recovery reached the target"

# (scratch data directory) -> None, called after the extract; tests use it to damage the copy.
BeforeVerify = Callable[[Path], None]


def run(
    ctx: AppContext,
    target: str | None = None,
    to_time: datetime | None = None,
    random_time: bool = False,
    keep: bool = False,
    report_dir: str | Path | None = None,
    trigger: str = "manual",
    scratch_dir: str | Path | None = None,
    opskit_command: str | None = None,
    before_verify: BeforeVerify | None = None,
) -> DrillReport:
    """Run one PITR drill of ``target`` and return its report (stored before returning).

    ``to_time`` recovers to that moment, ``random_time`` to a random one inside the window,
    neither to the end of the archive. Failed checks and breached objectives are in the report
    (``raise_for_verdict()``: exit 5 / 6). Raises ConfigError (2) for both moments at once, a
    moment outside the window, no base backup or no archived WAL, or no config file;
    UnreachableError (3) when the storage cannot be reached.
    """
    if to_time is not None and random_time:
        raise ConfigError("--to-time and --random-time exclude each other", hint="pass one of them")
    settings: DrillSettings = ctx.config.drill or DrillSettings()
    source = _source_target(ctx, target)
    store = ctx.storage(source.primary_storage)
    started_at = ctx.clock()
    backups = catalog.list_backups(store, source.name)
    window = pitr_model.pitr_window(store, source.name, backups, started_at)
    if window is None:
        raise ConfigError(
            f"target '{source.name}' has no base backup with archived WAL in storage '{store.name}' to drill",
            hint="take one with 'opskit backup now --kind base' and archive WAL with 'opskit wal push %p'",
        )
    moment = _moment(window, to_time, random_time)
    recovery = RecoveryTarget(time=moment)
    manifest = pitr_model.choose_base(backups, recovery, started_at)
    if manifest is None:  # the window starts at the oldest base backup: only a race gets here
        raise ConfigError(f"target '{source.name}' has no base backup consistent before {recovery.describe()}")
    pitr.check_wal_archived(store, source.name, manifest)
    # Listed before the server starts: what the replay must reach (a gap or a refused segment fails it).
    chain = pitr_chain.archived_chain(ctx, source.name, source.primary_storage, manifest)
    command = pitr.restore_command(ctx, source, opskit_command)
    drill_id = catalog.new_backup_id(started_at)
    result = DrillReport(
        drill_id=drill_id,
        trigger=trigger,
        target=source.name,
        staging_target=SCRATCH,
        staging_database=manifest.database or connection.database_of(source),
        started_at=started_at,
        manifest=manifest,
        storage=store.name,
        rpo_target=ctx.config.objectives.rpo,
        recovery_point=window.archived_at,  # the newest WAL stored: what a drill to the end recovers
    )
    result.pitr = {
        "target": recovery.describe(),
        "chosen_time": catalog.format_time(moment) if moment else None,
        "random_time": random_time,
        "window": {
            "start": catalog.format_time(window.start),
            "end": catalog.format_time(window.end),
            "newest_segment": window.newest_segment,
        },
    }
    clock = PhaseClock(started_at)
    log.info("pitr drill started", target=source.name, drill_id=drill_id, backup_id=manifest.id, to=recovery.describe())
    scratch = _scratch_root(scratch_dir or settings.scratch_dir, source.name)
    pgdata = scratch / "pgdata"
    drill = _Drill(ctx, settings, source, store, manifest, recovery, window, result, clock, pgdata, backups, chain)
    try:
        drill.recover(command, before_verify)
    finally:
        drill.clean_up(scratch, keep)
    finish.finish(ctx, store, result, clock, report_dir or settings.report_dir)
    return result


def _source_target(ctx: AppContext, target: str | None) -> TargetConfig:
    """Return the named target; with none named, the only target that is not a staging target.

    A server target is drilled as the cluster its base backups copy (not one of its databases).
    """
    if target is None:
        staging = {t.staging for t in ctx.config.targets.values() if t.staging}
        candidates = [name for name in ctx.config.targets if name not in staging]
        if len(candidates) == 1:
            target = candidates[0]
    return ctx.target(target)


def _moment(window: PitrWindow, to_time: datetime | None, random_time: bool) -> datetime | None:
    """Return the moment to recover to (None: the archive's end). Raises ConfigError for one outside the window."""
    if random_time:
        if window.waiting_for is not None:
            raise ConfigError(
                f"--random-time: the PITR window holds no moment yet ({window.waiting_note()})",
                hint="drill to the end of the archive (no moment), or wait for WAL archived after the base backup",
            )
        return window.start + (window.end - window.start) * random.random()
    hint = "pick a moment inside it (see 'opskit status'), or use --random-time"
    pitr_chain.check_reachable(RecoveryTarget(time=to_time), window, layout.DEFAULT_SEGMENT_SIZE, hint)
    return to_time


def _scratch_root(parent: str | Path | None, target: str) -> Path:
    """Return a new directory for the scratch server, which the server's user may enter.

    Raises ConfigError (2) when ``parent`` holds a character pg_ctl cannot pass to the server.
    """
    if parent is not None:
        pitr_directory.check_server_path(Path(parent).resolve(), "--scratch-dir")
        Path(parent).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"opskit-pitr-drill-{target}-", dir=parent))
    server_user.give_to_server_user(root)  # mkdtemp's 0700 directory is root's: postgres could not reach pgdata
    return root


class _Drill:
    """The steps of one PITR drill on its scratch directory; each appends its phase and its checks to the report."""

    def __init__(
        self,
        ctx: AppContext,
        settings: DrillSettings,
        source: TargetConfig,
        store: Storage,
        manifest: Manifest,
        recovery: RecoveryTarget,
        window: PitrWindow,
        result: DrillReport,
        clock: PhaseClock,
        pgdata: Path,
        backups: list[Manifest],
        chain: pitr_chain.ArchivedChain,
    ) -> None:
        self.ctx, self.settings, self.source, self.store = ctx, settings, source, store
        self.backups = backups  # every backup of the target: the size check compares with the base ones
        self.manifest, self.recovery, self.window = manifest, recovery, window
        self.result, self.clock, self.pgdata = result, clock, pgdata
        self.chain = chain
        self.server = PitrResult(manifest=manifest, pgdata=str(pgdata), target=recovery)
        self.reader: threading.Thread | None = None  # the WAL read-ahead, gone once the server stops

    # ------------------------------------------------------------------ phases

    def recover(self, restore_command: str, before_verify: BeforeVerify | None) -> None:
        """Run fetch, extract, verifybackup, replay and verify, stopping at the first phase that fails."""
        backup = open_backup(self.ctx, self.store, self.manifest)
        bases = [m for m in self.backups if m.kind == "base"]
        pre = checks.PreCheckContext(
            backup, bases, self.clock, self.result.phases, settings=self.settings, warnings=self.result.warnings
        )
        if not checks.run_pre_checks_of(pre, [checks.stored_object], self.result.checks):
            return
        if not self._extract():
            return
        if before_verify is not None:
            before_verify(self.pgdata)
        if not self._verifybackup():
            return
        pitr_settings.write_recovery_settings(self.pgdata, restore_command, self.recovery, self.manifest.id)
        server_user.give_to_server_user(self.pgdata)
        if not self._replay():
            return
        self.result.restored = True
        with self.clock.phase(self.result.phases, "verify"):
            self.result.checks.append(self._reached_target())
            self.result.checks.extend(self._amcheck())
            self._facts_checks()

    def _extract(self) -> bool:
        with self.clock.phase(self.result.phases, "extract") as timing:
            try:
                pitr_directory.empty_directory(str(self.pgdata))
                pitr_directory.extract(self.ctx, self.store, self.manifest, self.pgdata)
                with open(self.pgdata / BACKUP_MANIFEST, "wb") as out:
                    open_backup(self.ctx, self.store, self.manifest).read(BACKUP_MANIFEST, out)
            except OpskitError as exc:
                self.result.checks.append(Check("restore", "base backup extracts", "tar -x exit 0", exc.message, False))
                return False
            timing.bytes = self.manifest.artifact(catalog.DUMP_ARTIFACT).plain_size or 0
        self.result.checks.append(
            Check("restore", "base backup extracts", "tar -x exit 0, plain sha256 as stored", "extracted", True)
        )
        return True

    def _verifybackup(self) -> bool:
        name = "pg_verifybackup"
        with self.clock.phase(self.result.phases, "verifybackup"):
            try:
                tool = tools.find_tool("pg_verifybackup", int(self.manifest.server.get("major") or 0), self._bin_dir())
            except UnreachableError as exc:
                self.result.skipped.append({"name": name, "reason": exc.message})
                return True
            argv = [
                tool.path,
                "--no-parse-wal",
                "--manifest-path",
                str(self.pgdata / BACKUP_MANIFEST),
                str(self.pgdata),
            ]
            done = run_command(argv, timeout=AMCHECK_TIMEOUT)
        ok = done.returncode == 0
        actual = "backup successfully verified" if ok else _tail(done.stdout + done.stderr)
        self.result.checks.append(Check("restore", name, "every file as in backup_manifest", actual, ok))
        return ok

    def _replay(self) -> bool:
        with self.clock.phase(self.result.phases, "replay"):
            try:
                self._start_and_wait()
            except OpskitError as exc:
                self.result.checks.append(
                    Check(
                        "restore", "recovery completes", f"promoted at {self.recovery.describe()}", exc.message, False
                    )
                )
                return False
        self.result.checks.append(
            Check(
                "restore",
                "recovery completes",
                "the server promotes",
                f"promoted, timeline {self.server.timeline}",
                True,
            )
        )
        self.result.pitr = (self.result.pitr or {}) | {
            "reached": {
                "replay_lsn": self.server.replay_lsn,
                "last_transaction_time": _time(self.server.last_transaction_time),
                "timeline": self.server.timeline,
            },
            "scratch": {"pgdata": str(self.pgdata), "port": self.server.port},
        }
        return True

    def _start_and_wait(self) -> None:
        """Start the scratch server and wait for the promotion (:func:`opskit.restore.pitr.recover`).

        Past the archive's last transaction it recovers to the archive's end, the same state,
        and says so in a warning; a replay that stopped short of the archive raises.
        """
        self.reader = pitr.start_read_ahead(self.ctx, self.source, self.manifest, self.pgdata)
        try:
            pitr.recover(self.ctx, self.source, self.manifest, self.pgdata, self.server, self.chain)
        finally:
            if self.server.note is not None:
                self.result.warnings.append(f"{self.server.note}, the same state")

    # ------------------------------------------------------------------ checks after recovery

    def _reached_target(self) -> Check:
        """Recovery stopped where asked: at the moment (:func:`time_target_check`), or in the newest segment."""
        if self.recovery.time is not None:
            return time_target_check(
                self.recovery.time,
                self.server.last_transaction_time,
                self.server.replay_lsn,
                _recovery_log(self.pgdata),
            )
        size = int(self.manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
        timeline, newest = layout.segment_number(self.window.newest_segment, size)
        lsn = layout.parse_lsn(self.server.replay_lsn or "0/0")
        # The newest segment may end with its switch record: replay then stops at the next one's start.
        return Check(
            "post",
            REACHED_TARGET,
            f"replay into the newest archived segment {self.window.newest_segment}",
            f"replayed up to LSN {self.server.replay_lsn} (segment {layout.segment_name(timeline, lsn, size)})",
            lsn // size >= newest,
        )

    def _amcheck(self) -> list[Check]:
        """``pg_amcheck --all --install-missing``: heap and btree of every database; skipped without the tool."""
        name = "pg_amcheck heap and btree, all databases"
        try:
            tool = tools.find_tool("pg_amcheck", max(int(self.manifest.server.get("major") or 0), 14), self._bin_dir())
        except UnreachableError as exc:
            self.result.skipped.append({"name": name, "reason": exc.message})
            return []
        server = self._server_target()
        argv = [tool.path, "--maintenance-db", connection.conninfo(server, "postgres"), "--all", "--install-missing"]
        with connection.password_env(server, self.ctx.state_dir) as env:
            done = run_command(argv, env=env, timeout=AMCHECK_TIMEOUT)
        ok = done.returncode == 0
        actual = "no corruption found" if ok else _tail(done.stdout + done.stderr)
        return [Check("post", name, "exit 0, no corruption", actual, ok)]

    def _facts_checks(self) -> None:
        """Run the logical drill's checks that hold for a physical copy; record why the others are skipped."""
        reason = "a base backup counts no rows, and the moment recovered is later than the backup"
        for skipped in ("row counts", "content fingerprints", "object counts"):
            self.result.skipped.append({"name": skipped, "reason": reason})
        database = self.result.staging_database
        try:
            with connection.connect(
                self._server_target(), dbname=database, application_name="opskit pitr drill"
            ) as conn:
                context = checks.PostCheckContext(self.ctx, self.settings, self.manifest, conn, facts.SnapshotFacts())
                for check in checks.PITR_POST_CHECKS:
                    found = check(context)
                    self.result.checks.extend(found)
                    if check is checks.failed_migrations and not found:
                        self.result.skipped.append(
                            {"name": "flyway_schema_history", "reason": f"database '{database}' has no history table"}
                        )
        except (OpskitError, psycopg.Error) as exc:
            message = exc.message if isinstance(exc, OpskitError) else str(exc).strip()
            self.result.checks.append(Check("post", f"database '{database}' answers", "a connection", message, False))

    # ------------------------------------------------------------------ the scratch server

    def clean_up(self, scratch: Path, keep: bool) -> None:
        """Stop the scratch server and remove its directory, unless kept; record what was done."""
        pitr_directory.release_directory(self.pgdata)  # the extract's lock: a daemon runs many drills in one process
        failed = not self.result.passed
        if keep or (failed and self.settings.keep_on_failure):
            self.result.cleanup = self._kept(scratch, "--keep" if keep else "keep_on_failure: a check failed")
            return
        try:
            stopped = pitr_server.stop_server(self.ctx, self.source, self.manifest, self.pgdata)
        except OpskitError as exc:
            stopped = False
            self.result.warnings.append(f"could not stop the scratch server: {exc.message}")
        if not stopped:
            self.result.cleanup = {"action": "stop failed", "pgdata": str(self.pgdata), "port": self.server.port}
            self.result.warnings.append(f"the scratch server in '{self.pgdata}' did not stop; it was left as it is")
            return
        if self.reader is not None:
            self.reader.join(pitr.READER_EXIT_SECONDS)  # it leaves when the server is gone: no write into rmtree
        # A reader a fetch left behind (another process) leaves too, and takes its directory with it.
        _wait_gone(self.pgdata / "pg_wal" / archive.PREFETCH_DIR, pitr.READER_EXIT_SECONDS)
        shutil.rmtree(scratch, ignore_errors=True)
        self.result.cleanup = {"action": "removed", "pgdata": str(self.pgdata), "port": self.server.port}

    def _kept(self, scratch: Path, reason: str) -> dict[str, Any]:
        """Return the cleanup record of a kept scratch directory: how to connect, and how to stop and remove it."""
        port = self.server.port
        rm = shlex.join(["rm", "-r", str(scratch)])
        try:
            pg_ctl = pitr_server.server_tool(self.ctx, self.source, self.manifest, "pg_ctl").path
        except OpskitError:
            pg_ctl = "pg_ctl"
        stop = shlex.join(server_user.as_server_user([pg_ctl, "-D", str(self.pgdata), "-m", "fast", "stop"]))
        database = self.result.staging_database
        user = connection.dsn_parts(self.source).get("user")
        address = f"host=127.0.0.1 port={port} dbname={database}" + (f" user={user}" if user else "")
        return {
            "action": "kept",
            "pgdata": str(self.pgdata),
            "port": port,
            "reason": reason,
            "connect": shlex.join(["psql", address]) if port else None,
            "stop": f"{stop} && {rm}" if self.server.started else rm,
        }

    def _server_target(self) -> TargetConfig:
        assert self.server.port is not None
        return pitr_server.server_target(self.source, self.server.port)

    def _bin_dir(self) -> tools.BinDirs:
        return self.source.pg_bin_dir or self.ctx.config.tools.pg_bin_dir


@dataclass(frozen=True)
class RecoveryStop:
    """Where a targeted recovery stopped, from ``recovery stopping before commit of transaction N, time T``."""

    before: bool  # True: the transaction was not replayed ("before"); False: it was ("after")
    kind: str  # "commit" or "abort"
    xid: int
    time: datetime

    def describe(self) -> str:
        """Return the stop as the report says it: side, kind, transaction and its time (UTC)."""
        side = "before" if self.before else "after"
        return f"recovery stopped {side} {self.kind} of transaction {self.xid} at {_time(self.time)}"


def recovery_stop(log_text: str) -> RecoveryStop | None:
    """Return the last stopping line of a server log as a RecoveryStop, or None when it has none.

    None means recovery was not stopped by a transaction: no target, a target reached
    otherwise (an LSN, a restore point), or the WAL ended first. Never raises.
    """
    found = None
    for line in log_text.splitlines():
        match = STOPPING.search(line.rstrip())
        if match is not None:
            found = match
    if found is None:
        return None
    return RecoveryStop(
        before=found["side"] == "before",
        kind=found["kind"],
        xid=int(found["xid"]),
        time=datetime.fromisoformat(found["time"]),
    )


def time_target_check(moment: datetime, reached: datetime | None, replay_lsn: str | None, log_text: str) -> Check:
    """Return the "recovery reached the target" check of a recovery to ``moment``.

    It passes when the last replayed transaction (``reached``, None: none replayed) is at or
    before the moment and the scratch server's log names the transaction recovery stopped
    before, which is after the moment: so the last one replayed is the newest at or before it,
    and a recovery that stopped early (a target written in the wrong time zone, say) fails.
    When the archive holds no transaction after the moment the log has no such line but
    NOT_REACHED: the drill recovered to the archive's end, the same state, and ``actual`` says
    so. ``actual`` carries the stopping transaction and its time. Never raises.
    """
    expected = f"last transaction at or before {_time(moment)}, recovery stopping before one after it"
    actual = f"last transaction {_time(reached) or 'none replayed'}, LSN {replay_lsn}"
    ok = reached is None or reached <= moment
    stop = recovery_stop(log_text)
    if stop is not None:
        # A time target stops only before a transaction (recoveryStopsBefore); "after" is for xid targets.
        ok = ok and stop.before and stop.time > moment
        actual += f"; {stop.describe()}"
    elif NOT_REACHED in log_text:
        actual += "; no archived transaction after the moment: the WAL ended first, recovered to its end"
    else:
        ok = False
        actual += f"; {RECOVERY_LOG} names no transaction recovery stopped at"
    return Check("post", REACHED_TARGET, expected, actual, ok)


def _recovery_log(pgdata: Path) -> str:
    """Return the scratch server's log ("" when it cannot be read: the checks then say the log names nothing)."""
    try:
        return (pgdata / RECOVERY_LOG).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _wait_gone(path: Path, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``path`` to disappear."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(output: bytes) -> str:
    lines = [line for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(lines[-OUTPUT_LINES:]) or "no output"


def _time(moment: datetime | None) -> str | None:
    return catalog.format_time(moment) if moment is not None else None


def describe_kept(report: dict[str, Any]) -> list[str]:
    """Return the lines telling how to connect to and stop a kept scratch server ([] when it was removed)."""
    cleanup = report.get("cleanup") or {}
    if cleanup.get("action") != "kept":
        return []
    return [
        f"scratch server kept: connect with {cleanup.get('connect')}",
        f"stop and remove it with: {cleanup.get('stop')}",
    ]
