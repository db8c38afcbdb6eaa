"""``opskit wal push`` and ``opskit wal fetch``: the archive_command and restore_command of point-in-time recovery."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.errors import OpskitError
from opskit.core.redaction import redact_text

if TYPE_CHECKING:
    from opskit.wal.verify import WalVerifyReport

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
@click.option(
    "--chain-only", is_flag=True, help="Only check the chain for gaps (lists the archive, reads no WAL: fast)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def wal_verify(app: AppContext, target: str | None, storage: str | None, chain_only: bool, as_json: bool) -> None:
    """Check that every base backup's WAL reaches the newest segment without a gap, and reads back intact.

    Timeline switches are followed through the archived history files. Every stored WAL file
    a kept base backup needs is then read as recovery would read it: decrypted (with the age
    identity configured; without it only the age header is checked), decompressed to the end
    of its zstd frame and compared with the sha256 recorded when it was pushed. Exits 5
    naming the first gap and each damaged file; exits 4 when the configured identity fits
    none of the encrypted files. --chain-only skips the reading.
    """
    from opskit.wal import verify

    report = verify.run(app, target=target, storage=storage, read=not chain_only)
    if as_json:
        echo_json(report.to_dict())
    else:
        _render_verify(report)
    verify.raise_for_problems(report)


def _render_verify(report: WalVerifyReport) -> None:
    """Print one line per base backup's chain, the archive's size, then one line per damaged WAL file."""
    from opskit.core.units import format_size

    chains = report.chain
    for c in chains.chains:
        state = "ok" if c.ok else f"GAP: {c.missing_count} missing, first {c.missing[0] if c.missing else '-'}"
        click.echo(f"base backup {c.backup_id}: WAL {c.first}..{c.newest or '-'} {state}")
    if not chains.chains:
        click.echo(f"target '{chains.target}' has no base backups")
    click.echo(f"{chains.segments} segments archived, newest {chains.newest_segment or '-'}")
    content = report.content
    if content is None:
        click.echo("WAL content not read (--chain-only)")
        return
    damaged = f"{len(content.problems)} damaged" if content.problems else "all intact"
    click.echo(f"{content.files} WAL files read ({format_size(content.bytes)} stored): {damaged}")
    if content.header_only:
        click.echo(
            f"{content.header_only} encrypted WAL files checked without the key (age header only): "
            "configure [encryption] identity to read them"
        )
    for problem in sorted(content.problems, key=lambda p: p.name):
        click.echo(f"WAL {problem.name}: DAMAGED: {problem.problem}")


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
