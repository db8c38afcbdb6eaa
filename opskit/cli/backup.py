"""``opskit backup now`` and ``opskit backup list`` (pin, unpin and verify are added by backup_extra)."""

from __future__ import annotations

import sys
from typing import Any

import click

from opskit import actions, catalog
from opskit.backup import backup as backup_action
from opskit.backup import kinds as backup_kinds
from opskit.backup.server import ServerBackupResult
from opskit.catalog import Manifest, format_time, list_backups
from opskit.cli import pass_app
from opskit.cli.render import echo_json, echo_table
from opskit.context import AppContext
from opskit.core.errors import ConfigError, CopyFailed, OpskitError
from opskit.core.units import format_duration, format_size
from opskit.plan.timeline import is_future


@click.group("backup")
def backup_group() -> None:
    """Take, list, verify and pin backups."""


@backup_group.command("now")
@click.option("--target", "-t", help="Target to back up (default: the default target).")
@click.option("--all", "all_targets", is_flag=True, help="Back up every target that is not a staging target.")
@click.option("--label", "labels", multiple=True, help="Label recorded in the manifest (repeatable).")
@click.option(
    "--kind",
    type=click.Choice(backup_kinds.KINDS),
    default="logical",
    show_default=True,
    help="logical: pg_dump of the database; base: pg_basebackup of the cluster (for --pitr restores).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@pass_app
def backup_now(
    app: AppContext, target: str | None, all_targets: bool, labels: tuple[str, ...], kind: str, as_json: bool
) -> None:
    """Take a consistent backup now: pg_dump (or pg_basebackup) streamed through zstd [and age] into the storages."""
    if all_targets and target:
        raise click.UsageError("--target and --all exclude each other")
    server_run: ServerBackupResult | None = None
    if all_targets:
        results, errors, warnings = _backup_all(app, labels, kind)
    else:
        outcome = actions.call("backup", app, function=backup_kinds.run, target=target, labels=labels, kind=kind)
        if isinstance(outcome, ServerBackupResult):  # a server target: one outcome per database
            server_run = outcome
        results, errors, warnings = _outcomes(outcome)
    if as_json:
        docs = [r.manifest.to_dict() | {"copies": r.copies} for r in results]
        echo_json(server_run.to_dict() if server_run else docs if all_targets else docs[0])
    else:
        for result in results:
            click.echo(_summary(result))
    for warning in warnings:
        click.echo(f"opskit: warning: {warning}", err=True)
    failed_copies = [(r.manifest.target, name, err) for r in results for name, err in r.failed_copies.items()]
    for target_name, failure in errors.items():
        click.echo(f"opskit: error: backup of target '{target_name}' failed: {failure.one_line()}", err=True)
    for target_name, storage, copy_error in failed_copies:
        click.echo(f"backup ok, copy to '{storage}' failed (target '{target_name}'): {copy_error}", err=True)
    if errors:
        sys.exit(max(e.exit_code for e in errors.values()))
    if failed_copies:
        sys.exit(CopyFailed.exit_code)


_Outcomes = tuple[list[backup_action.BackupResult], dict[str, OpskitError], list[str]]


def _outcomes(outcome: backup_action.BackupResult | ServerBackupResult) -> _Outcomes:
    """Return (backups, errors by derived target, warnings) of one run; a server target's per database."""
    if isinstance(outcome, ServerBackupResult):
        return list(outcome.results.values()), dict(outcome.errors), outcome.warnings
    return [outcome], {}, []


def _backup_all(app: AppContext, labels: tuple[str, ...], kind: str) -> _Outcomes:
    """Back up every ``--all`` target as its own observed run (its pings, hooks and run record); carry on past failures."""
    names = backup_action.backup_targets(app)
    if not names:
        raise ConfigError("no targets to back up")
    results: list[backup_action.BackupResult] = []
    errors: dict[str, OpskitError] = {}
    warnings: list[str] = []
    for name in names:
        try:
            outcome = actions.call("backup", app, function=backup_kinds.run, target=name, labels=labels, kind=kind)
        except OpskitError as exc:
            errors[name] = exc
            continue
        done, failed, warned = _outcomes(outcome)
        results.extend(done)
        errors.update(failed)
        warnings.extend(warned)
    return results, errors, warnings


def _summary(result: backup_action.BackupResult) -> str:
    m = result.manifest
    dump = m.artifact("db")
    seconds = (m.finished_at - m.started_at).total_seconds()
    copies = "".join(f", copied to '{name}'" for name, err in result.copies.items() if err is None)
    encrypted = ", encrypted" if m.encrypted else ""
    if m.kind == "base":
        return (
            f"base backup {m.id} of target '{m.target}' committed to '{result.storage}'{copies}: "
            f"{format_size(m.size)} stored ({format_size(dump.plain_size)} tar{encrypted}), "
            f"timeline {m.base.get('timeline')}, WAL {m.base.get('wal_start')}..{m.base.get('wal_stop')}, "
            f"{seconds:.1f} s"
        )
    return (
        f"backup {m.id} of target '{m.target}' committed to '{result.storage}'{copies}: "
        f"{format_size(m.size)} stored ({format_size(dump.plain_size)} dump{encrypted}), "
        f"{len(m.tables)} tables, {seconds:.1f} s"
    )


@backup_group.command("list")
@click.option("--target", "-t", help="Only this target (default: every target).")
@click.option("--storage", "-s", help="Only this storage (default: every storage of each target).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
@pass_app
def backup_list(app: AppContext, target: str | None, storage: str | None, as_json: bool) -> None:
    """List complete backups, newest first."""
    # A server target lists the derived targets (one per database) its storages hold.
    names = catalog.expand_targets(app.config, app.storage, [target] if target else list(app.config.targets))
    rows: list[tuple[list[str], Manifest]] = []
    for name in names:
        rows.extend(_held_backups(app, name, storage))
    now = app.clock()
    if as_json:
        echo_json(
            [
                m.to_dict() | {"storage": s[0], "storages": s, "future_dated": is_future(m.snapshot_time, now)}
                for s, m in rows
            ]
        )
        return
    if not rows:
        click.echo("no backups" + (f" of target '{target}'" if target else ""))
        return
    table: list[list[Any]] = []
    for storage_name, m in rows:
        table.append(
            [
                m.id,
                m.target,
                m.kind,
                format_time(m.snapshot_time),
                # A wrong host clock: say so instead of a negative age (never picked as "latest").
                "FUTURE-DATED" if is_future(m.snapshot_time, now) else format_duration(now - m.snapshot_time),
                format_size(m.size),
                ",".join(storage_name),
                ",".join(m.labels),
            ]
        )
    echo_table(["ID", "TARGET", "KIND", "SNAPSHOT (UTC)", "AGE", "SIZE", "STORAGE", "LABELS"], table)


def _held_backups(app: AppContext, target: str, only: str | None) -> list[tuple[list[str], Manifest]]:
    """Return (every storage holding it, primary first; its manifest) per backup of ``target``, newest first.

    The primary (or ``only``) must be readable (its error propagates); a secondary that cannot be
    listed is a warning on stderr, so an offsite outage never hides the primary's list.
    """
    config = app.target(target)
    held: dict[str, tuple[list[str], Manifest]] = {}
    for storage_name in [only] if only else config.storages:
        try:
            manifests = list_backups(app.storage(storage_name), target)
        except OpskitError as exc:
            if only or storage_name == config.primary_storage:
                raise
            click.echo(f"opskit: warning: storage '{storage_name}' not listed: {exc.one_line()}", err=True)
            continue
        for m in manifests:
            held.setdefault(m.id, ([], m))[0].append(storage_name)
    return sorted(held.values(), key=lambda item: (item[1].snapshot_time, item[1].id), reverse=True)


def register(group: click.Group) -> None:
    """Add the ``backup`` command group (with pin/unpin/verify when available)."""
    from opskit.cli.backup_extra import register_backup_commands

    register_backup_commands(backup_group)
    group.add_command(backup_group)
