"""The ``--pitr`` options of ``opskit restore``: recover a base backup and archived WAL to a moment."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from opskit.catalog import format_time
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option("--pitr", is_flag=True, help="Point-in-time recovery: a base backup plus archived WAL into --pgdata."),
    click.option("--to-time", metavar="TIME", help="--pitr: recover up to this moment (ISO 8601; UTC without a zone)."),
    click.option("--to-lsn", metavar="LSN", help="--pitr: recover up to this WAL location (0/16B3748)."),
    click.option(
        "--to-name", metavar="NAME", help="--pitr: recover up to this restore point (pg_create_restore_point)."
    ),
    click.option("--latest", is_flag=True, help="--pitr: recover to the end of the archived WAL."),
    click.option("--pgdata", metavar="DIR", help="--pitr: the new, empty data directory to restore into."),
    click.option("--start", is_flag=True, help="--pitr: start the server on a free port and wait for recovery."),
    click.option(
        "--opskit-command",
        metavar="CMD",
        help="--pitr: how the server runs opskit in restore_command (default: this opskit).",
    ),
]


def pitr_options(func: F) -> F:
    """Add the ``--pitr`` options to the restore command."""
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def parse_time(text: str) -> datetime:
    """Return ``--to-time`` as an aware datetime (UTC when no zone is given). Raises ConfigError."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--to-time '{text}' is not an ISO 8601 time", hint="e.g. 2026-12-01T14:59:00Z") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def run_pitr(
    app: AppContext,
    selector: str | None,
    target: str | None,
    storage: str | None,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    """Run ``restore --pitr`` with the parsed ``options`` and print its result."""
    from opskit.restore import pitr, pitr_model

    if not options.get("pgdata"):
        raise click.UsageError("--pitr needs --pgdata DIR (a new, empty data directory)")
    chosen = [k for k in ("to_time", "to_lsn", "to_name") if options.get(k)] + (
        ["latest"] if options.get("latest") else []
    )
    if len(chosen) != 1:
        raise click.UsageError("--pitr needs exactly one of --to-time, --to-lsn, --to-name or --latest")
    result = pitr.run(
        app,
        pgdata=options["pgdata"],
        target=target,
        storage=storage,
        to_time=parse_time(options["to_time"]) if options.get("to_time") else None,
        to_lsn=options.get("to_lsn"),
        to_name=options.get("to_name"),
        selector=None if selector in (None, "latest") else selector,
        start=bool(options.get("start")),
        opskit_command=options.get("opskit_command"),
    )
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(
        f"restored base backup {result.manifest.id} into '{result.pgdata}', set to recover to {result.target.describe()}"
    )
    if result.note is not None:
        click.echo(result.note)
    if result.started:
        reached = format_time(result.last_transaction_time) if result.last_transaction_time else "no transaction"
        click.echo(
            f"recovery reached LSN {result.replay_lsn} (last transaction {reached}), timeline {result.timeline}; "
            f"the server runs on 127.0.0.1:{result.port} (stop it with: pg_ctl -D {shlex.quote(result.pgdata)} stop)"
        )
    else:
        click.echo(
            f"start it with: pg_ctl -D {shlex.quote(result.pgdata)} start (recovery runs, then the server promotes)"
        )
    click.echo(pitr_model.ARCHIVING_OFF)
