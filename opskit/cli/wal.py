"""``opskit wal push`` and ``opskit wal fetch``: the archive_command and restore_command of point-in-time recovery."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.errors import OpskitError
from opskit.core.redaction import redact_text

F = TypeVar("F", bound=Callable[..., Any])
ABORT_EXIT_BASE = 128  # = opskit.wal.archive.ABORT_EXIT_BASE, not imported: --help must not load the archive code


def abort_recovery_on_error(func: F) -> F:
    """Make ``wal fetch`` exit 128 + the error's code on every failure, so PostgreSQL aborts recovery.

    The one error line is printed as every verb prints it; ``sys.exit(1)`` (the file is not
    archived) and Ctrl-C (130) pass through unchanged. Wraps the config load too: a broken
    config must not read as the end of the archive.
    """

    # PostgreSQL aborts recovery when restore_command exits above 125 (or dies by a signal); any
    # other non-zero exit means "not archived": recovery ends there and the server promotes
    # (https://www.postgresql.org/docs/current/continuous-archiving.html#BACKUP-PITR-RECOVERY).
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OpskitError as exc:
            click.echo(f"opskit: error: {redact_text(exc.one_line())}", err=True)
            sys.exit(ABORT_EXIT_BASE + exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            click.echo(f"opskit: unexpected error: {type(exc).__name__}: {redact_text(str(exc))}", err=True)
            sys.exit(ABORT_EXIT_BASE + 1)

    return cast(F, wrapper)


@click.group("wal")
def wal_group() -> None:
    """Archive WAL and fetch it back (PostgreSQL's archive_command and restore_command)."""


@wal_group.command("push")
@click.argument("path")
@click.option("--target", "-t", help="Target whose archive receives the file (default: the default target).")
@click.option("--json", "as_json", is_flag=True, help="Print what was stored as JSON.")
@pass_app
def wal_push(app: AppContext, path: str, target: str | None, as_json: bool) -> None:
    """Archive the WAL file PATH: archive_command = 'opskit wal push %p'.

    Pushing a file that is already archived with the same content succeeds; different
    content under the same name fails (exit 4) and overwrites nothing.
    """
    from opskit.wal import archive

    result = archive.run(app, path, target=target)
    if as_json:
        echo_json(result.to_dict())


@wal_group.command("fetch")
@click.argument("name")
@click.argument("destination")
@click.option("--target", "-t", help="Target whose archive holds the file (default: the default target).")
@click.option(
    "--storage",
    "-s",
    help="Storage to read the WAL from (default: the target's primary; restore --pitr --storage writes it here).",
)
@abort_recovery_on_error
@pass_app
def wal_fetch(app: AppContext, name: str, destination: str, target: str | None, storage: str | None) -> None:
    """Restore the archived WAL file NAME to DESTINATION: restore_command = 'opskit wal fetch %f %p'.

    Exits 1 without a message only when the archive has no such file, as PostgreSQL expects
    at the end of the archive. Any other failure prints one error line and exits 128 + its
    opskit code, above 125 so that PostgreSQL aborts the recovery instead of ending it there
    and promoting: 130 configuration error, 131 storage unreachable or refusing us, 132 the
    fetch failed (no age identity fits, storage error, pg_wal not writable), 133 a corrupt
    object (sha256 mismatch, not zstd), 129 an unexpected error.
    """
    from opskit.wal import archive

    if not archive.fetch(app, name, destination, target=target, storage=storage):
        sys.exit(1)


@wal_group.command("covers")
@click.argument("moment")
@click.option("--target", "-t", help="Target whose PITR window to check (default: the default target).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer and the window as JSON.")
@pass_app
def wal_covers(app: AppContext, moment: str, target: str | None, as_json: bool) -> None:
    """Exit 0 when MOMENT (ISO 8601, UTC if no zone) is inside the PITR window, 1 when it is not.

    For scripts and runbook conditions (``when``/``unless``): a base backup consistent
    before MOMENT exists and WAL archived after it.

    \b
    Example:
      opskit wal covers --target app 2026-12-01T14:59:00Z && echo "restore --pitr can reach it"
    """
    from opskit.cli.restore_pitr import parse_time
    from opskit.core.errors import ConfigError
    from opskit.restore import pitr_model

    try:
        when = parse_time(moment)
    except ConfigError as exc:
        raise ConfigError(f"MOMENT '{moment}' is not an ISO 8601 time", hint=exc.hint) from exc
    answer = pitr_model.coverage(app, target, when)
    if as_json:
        echo_json(answer.to_dict())
    else:
        click.echo(answer.describe())
    if not answer.covered:
        sys.exit(1)


@wal_group.command("verify")
@click.option("--target", "-t", help="Target whose archive to check (default: the only one).")
@click.option("--storage", "-s", help="Storage to check (default: the target's primary).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def wal_verify(app: AppContext, target: str | None, storage: str | None, as_json: bool) -> None:
    """Check that the WAL chain of every base backup reaches the newest archived segment without a gap.

    Timeline switches are followed through the archived history files. Exits 5 on a gap.
    """
    from opskit.wal import chain

    report = chain.check(app, target=target, storage=storage)
    if as_json:
        echo_json(report.to_dict())
    else:
        for c in report.chains:
            state = "ok" if c.ok else f"GAP: {c.missing_count} missing, first {c.missing[0] if c.missing else '-'}"
            click.echo(f"base backup {c.backup_id}: WAL {c.first}..{c.newest or '-'} {state}")
        if not report.chains:
            click.echo(f"target '{report.target}' has no base backups")
        click.echo(f"{report.segments} segments archived, newest {report.newest_segment or '-'}")
    chain.raise_for_gaps(report)


@wal_group.command("stream")
@click.option("--target", "-t", help="Target whose WAL to stream (default: the only one).")
@click.option("--json", "as_json", is_flag=True, help="Print what was shipped as JSON when it stops.")
@pass_app
def wal_stream(app: AppContext, target: str | None, as_json: bool) -> None:
    """Stream WAL with pg_receivewal on a replication slot and ship it into the archive until stopped.

    Completed segments are pushed as they finish, the one being written every wal.partial_interval.
    """
    from opskit.wal import stream

    result = stream.run(app, target=target)
    if as_json:
        echo_json({"target": result.target, "segments": result.segments, "partials": result.partials})
    else:
        click.echo(f"wal stream of target '{result.target}' stopped: {result.segments} segments shipped")


def register(group: click.Group) -> None:
    """Add the ``wal`` command group."""
    group.add_command(wal_group)
