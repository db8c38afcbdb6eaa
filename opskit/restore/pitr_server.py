"""The restored server: started on a free loopback port with the backup's major, waited for until it promotes, stopped.

Its log says why it stopped: a WAL file ``wal fetch`` refused (it exits above 125, so
PostgreSQL aborts recovery) becomes the fetch's own error; anything else carries the log's
FATAL or PANIC line.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg

from opskit.catalog import Manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError, RestoreFailed, UnreachableError, VerificationFailed
from opskit.core.execute import run as run_command
from opskit.core.log import get_logger
from opskit.pg import connection, tools
from opskit.restore.pitr_model import PitrResult
from opskit.restore.pitr_settings import RECOVERY_LOG
from opskit.restore.server_user import as_server_user
from opskit.wal import archive

log = get_logger(__name__)


RECOVERY_WAIT_SECONDS = 3600


# PostgreSQL's FATAL when restore_command exits above 125 (xlogarchive.c, RestoreArchivedFile):
# the file named is one ``wal fetch`` refused (exit 128 + its opskit code).
FETCH_REFUSED = re.compile(
    r'could not restore file "(?P<name>[^"]+)" from archive: child process exited with exit code (?P<code>\d+)'
)


FETCH_ERROR = "opskit: error: "  # how the fetch's one error line begins (its stderr goes to the server log)


SERVER_FATAL = re.compile(r"\b(?:FATAL|PANIC):")


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
        if not server_ran(directory):
            raise  # no server yet (the read-ahead's first batch): the caller empties the directory
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


def server_ran(directory: Path) -> bool:
    """Return True once a server was started in ``directory`` (pg_ctl opens its log first, then the server writes its pid)."""
    return (directory / RECOVERY_LOG).exists() or (directory / "postmaster.pid").exists()


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
