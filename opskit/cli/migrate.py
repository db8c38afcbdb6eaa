"""``opskit migrate``: apply Flyway migrations (bare ``migrate``), and info/validate/baseline/repair."""

from __future__ import annotations

from typing import Any

import click

from opskit.context import AppContext
from opskit.core.errors import ConfigError, MigrationFailed, MigrationValidationFailed
from opskit.flyway.results import Applied
from opskit.migrate import migrate as action

_TARGET_KEY = "opskit.migrate.target"


def _app(cctx: click.Context) -> AppContext:
    return cctx.obj.app


def _target(cctx: click.Context, own: str | None) -> str | None:
    """Return the subcommand's --target, else the one given to the group."""
    return own or cctx.meta.get(_TARGET_KEY)


def _say(message: str) -> None:
    click.echo(message, err=True)


def _print_applied(applied: Applied) -> None:
    what = f"version {applied.version}" if applied.version else "repeatable"
    mode = "" if applied.transactional else " (no transaction)"
    click.echo(f"applied {applied.script}  [{what}: {applied.description}]  {applied.execution_ms} ms{mode}")


target_option = click.option(
    "--target", "-t", "target_name", metavar="NAME", help="Target database (default: the default target)."
)


@click.group("migrate", invoke_without_command=True)
@target_option
@click.option(
    "--to-version",
    "version_target",
    metavar="V",
    help="Flyway target: a version (2.1, '2.1?' if it may be missing), current, next or latest.",
)
@click.option("--backup-first", is_flag=True, help="Take a 'pre-migrate' backup before applying anything.")
@click.option("--rehearse", is_flag=True, help="Apply on a restored copy on the target's staging server first.")
@click.option("--dry-run", is_flag=True, help="List what would run; change nothing.")
@click.option(
    "--restore-on-failure",
    is_flag=True,
    help="With --backup-first: restore the backup if a migration fails after this run committed any.",
)
@click.option("--yes", "-y", is_flag=True, help="Confirm the restore into a protected target without a prompt.")
@click.pass_context
def migrate_group(
    cctx: click.Context,
    target_name: str | None,
    version_target: str | None,
    backup_first: bool,
    rehearse: bool,
    dry_run: bool,
    restore_on_failure: bool,
    yes: bool,
) -> None:
    """Apply pending Flyway migrations (V*.sql, R__*.sql), one transaction each.

    Reads [migrations] of opskit.toml, an existing flyway.conf/flyway.toml and FLYWAY_*
    variables. Exit 4 when a migration fails (after --backup-first, the restore command that
    undoes what the run committed is printed), 5 when validation fails, 7 when another
    migration holds the lock, 130 when interrupted (naming what was committed before).
    """
    cctx.meta[_TARGET_KEY] = target_name
    if cctx.invoked_subcommand is not None:
        if any((version_target, backup_first, rehearse, dry_run, restore_on_failure, yes)):
            raise click.UsageError(
                f"these options apply to 'opskit migrate' itself, not to 'migrate {cctx.invoked_subcommand}'"
            )
        return
    if restore_on_failure and not backup_first:
        raise click.UsageError("--restore-on-failure needs --backup-first (there is nothing to restore otherwise)")
    app = _app(cctx)
    try:
        outcome = action.run(
            app,
            target_name,
            version_target=version_target,
            backup_first=backup_first,
            rehearse=rehearse,
            dry_run=dry_run,
            restore_on_failure=restore_on_failure,
            yes=yes,
            on_applied=_print_applied,
            on_event=_say,
        )
    except MigrationFailed as exc:
        _print_failure(exc)
        raise
    except action.MigrateInterrupted as interrupted:
        # Not the generic "nothing was committed" of an interrupt: this run had committed
        # migrations before it, and the operator must know which (and how to undo them).
        lines = interrupted.lines()
        click.echo(f"opskit: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(line, err=True)
        raise click.exceptions.Exit(130) from None
    report = outcome.report
    if report.dry_run:
        if report.applied:
            now = report.initial_version or "<< Empty Schema >>"
            if report.refused:
                click.echo(
                    f"migrate would refuse this run: {report.count} migration(s) pending on target "
                    f"'{outcome.target}' (schema version now: {now}), none would be applied:"
                )
            else:
                click.echo(
                    f"would apply {report.count} migration(s) to target '{outcome.target}' (schema version now: {now}):"
                )
            for applied in report.applied:
                what = f"version {applied.version}" if applied.version else "repeatable"
                mode = "" if applied.transactional else " (no transaction)"
                if applied.refusal is not None:
                    mode = "  REFUSED: mixes transactional and non-transactional statements (mixed = false)"
                click.echo(f"  {applied.script}  [{what}: {applied.description}]{mode}")
        if report.refused:
            raise action.refusal_error(report)
        return
    if report.applied:
        total = sum(a.execution_ms for a in report.applied)
        click.echo(
            f"Successfully applied {report.count} migration(s) to target '{outcome.target}', now at version "
            f"{report.target_version or report.initial_version or '<< Empty Schema >>'} "
            f"(execution time {total} ms)"
        )
    else:
        click.echo(f"Target '{outcome.target}' is up to date. No migration necessary.")


def _print_failure(exc: MigrationFailed) -> None:
    click.echo(f"migration failed: {exc.migration or '?'}", err=True)
    if exc.database_error is not None:  # else the error line that follows says what stopped the run
        click.echo(f"database error: {exc.database_error}", err=True)
    if exc.restore_command and not exc.restored:
        click.echo(f"to undo this run, restore the pre-migrate backup: {exc.restore_command}", err=True)


@migrate_group.command("info")
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print what 'flyway info -outputType=json' prints.")
@click.pass_context
def info_command(cctx: click.Context, target_name: str | None, as_json: bool) -> None:
    """Show every migration and its state (Pending, Success, Failed, Outdated, ...)."""
    app = _app(cctx)
    outcome = action.info(app, _target(cctx, target_name))
    document = action.info_json(outcome, app.clock())
    if as_json:
        from opskit.cli.render import echo_json

        echo_json(document)
        return
    from opskit.cli.render import echo_table

    click.echo(f"Schema version: {document['schemaVersion'] or '<< Empty Schema >>'}")
    rows = [
        [m["category"], m["version"], m["description"], m["type"], m["installedOnUTC"], m["state"]]
        for m in document["migrations"]
    ]
    if rows:
        echo_table(["Category", "Version", "Description", "Type", "Installed On", "State"], rows)
    else:
        click.echo("No migrations found.")


@migrate_group.command("validate")
@target_option
@click.pass_context
def validate_command(cctx: click.Context, target_name: str | None) -> None:
    """Check the scripts against the history table, with Flyway's messages (exit 5 when invalid)."""
    try:
        state = action.validate(_app(cctx), _target(cctx, target_name))
    except MigrationValidationFailed as exc:
        for message in exc.errors:
            click.echo(message, err=True)
        raise
    click.echo(f"Successfully validated {len(state.infos)} migrations")


@migrate_group.command("baseline")
@target_option
@click.option("--version", "version", metavar="V", help="Baseline version (default: baselineVersion, 1).")
@click.option("--description", metavar="TEXT", help="Baseline description (default: << Flyway Baseline >>).")
@click.pass_context
def baseline_command(
    cctx: click.Context, target_name: str | None, version: str | None, description: str | None
) -> None:
    """Mark an existing database as being at VERSION, so older migrations never run on it."""
    report = action.baseline(_app(cctx), _target(cctx, target_name), version, description)
    if report.created:
        click.echo(f"Successfully baselined schema with version: {report.version}")
    else:
        click.echo(f"Schema already baselined with version: {report.version}")


@migrate_group.command("repair")
@target_option
@click.pass_context
def repair_command(cctx: click.Context, target_name: str | None) -> None:
    """Remove failed rows, mark missing migrations deleted, realign checksums with the files."""
    report = action.repair(_app(cctx), _target(cctx, target_name))
    if not report.actions:
        click.echo("Repair of the schema history was not needed: nothing changed.")
    for text, items in (
        ("removed failed row", report.removed),
        ("marked deleted", report.deleted),
        ("realigned", report.aligned),
    ):
        for item in items:
            click.echo(f"{text}: {item.label}")
    if report.actions:
        click.echo("Successfully repaired schema history table: " + ", ".join(report.actions))


def register(group: Any) -> None:
    """Add ``migrate`` and its subcommands to the opskit group."""
    if not isinstance(group, click.Group):
        raise ConfigError("opskit.cli.migrate.register needs a click group")
    group.add_command(migrate_group)
