"""``opskit wal push`` and ``opskit wal fetch``: the archive_command and restore_command of point-in-time recovery."""

from __future__ import annotations

import sys

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext


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
@pass_app
def wal_fetch(app: AppContext, name: str, destination: str, target: str | None) -> None:
    """Restore the archived WAL file NAME to DESTINATION: restore_command = 'opskit wal fetch %f %p'.

    Exits 1 without a message when the archive has no such file, as PostgreSQL expects at
    the end of the archive.
    """
    from opskit.wal import archive

    if not archive.fetch(app, name, destination, target=target):
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
    from opskit.restore import pitr

    try:
        when = parse_time(moment)
    except ConfigError as exc:
        raise ConfigError(f"MOMENT '{moment}' is not an ISO 8601 time", hint=exc.hint) from exc
    answer = pitr.coverage(app, target, when)
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
