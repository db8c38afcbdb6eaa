"""``opskit backup now`` and ``opskit backup list`` (pin, unpin and verify are added by backup_extra)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from opskit import actions, catalog
from opskit.backup import backup as backup_action
from opskit.backup import kinds as backup_kinds
from opskit.backup.server import ServerBackupResult
from opskit.catalog import Manifest, format_time, list_backups
from opskit.cli import pass_app
from opskit.cli.render import echo_json, echo_table
from opskit.config.names import label_problem
from opskit.context import AppContext
from opskit.core.errors import ConfigError, CopyFailed, OpskitError
from opskit.core.redaction import redact_text
from opskit.core.units import format_duration, format_size
from opskit.plan.timeline import is_future


@click.group("backup")
def backup_group() -> None:
    """Take, list, verify and pin backups."""


def _check_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``labels`` when each can label a backup (config.names.label_problem); raise click.BadParameter (exit 2) if not."""
    for label in labels:
        problem = label_problem(label)
        if problem is not None:
            raise click.BadParameter(problem, param_hint="--label")
    return labels


@backup_group.command("now")
@click.option("--target", "-t", help="Target to back up (default: the default target).")
@click.option("--all", "all_targets", is_flag=True, help="Back up every target that is not a staging target.")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=lambda _ctx, _param, value: _check_labels(value),
    help="Label recorded in the manifest (repeatable; no commas or control characters).",
)
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
        if all_targets:  # a failed target's entry beside the manifests, so a script sees it failed
            docs += [_error_entry(name, failure) for name, failure in errors.items()]
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


def _error_entry(target: str, failure: OpskitError) -> dict[str, Any]:
    """Return the ``--all --json`` entry of a target whose backup failed (the error object's fields, redacted)."""
    return {
        "target": target,
        "ok": False,
        "exit_code": failure.exit_code,
        "type": type(failure).__name__,
        "message": redact_text(failure.message),
        "hint": redact_text(failure.hint or "") or None,
    }


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
    """List complete backups, newest first; a backup whose manifest cannot be read is listed as UNREADABLE."""
    # A server target lists the derived targets (one per database) its storages hold.
    names = catalog.expand_targets(app.config, app.storage, [target] if target else list(app.config.targets))
    rows: list[tuple[list[str], Manifest | catalog.BadManifest]] = []
    for name in names:
        rows.extend(_held_backups(app, name, storage))
    now = app.clock()
    for storages, item in rows:
        if isinstance(item, catalog.BadManifest):
            click.echo(
                f"opskit: warning: backup {item.backup_id} of target '{item.target}' in {','.join(storages)}: "
                f"{item.error}; do not rely on it, run 'opskit backup verify --all'",
                err=True,
            )
    if as_json:
        echo_json([_json_row(storages, item, now) for storages, item in rows])
        return
    if not rows:
        click.echo("no backups" + (f" of target '{target}'" if target else ""))
        return
    echo_table(
        ["ID", "TARGET", "KIND", "SNAPSHOT (UTC)", "AGE", "SIZE", "STORAGE", "LABELS"],
        [_table_row(storages, item, now) for storages, item in rows],
    )


def _json_row(storages: list[str], item: Manifest | catalog.BadManifest, now: datetime) -> dict[str, Any]:
    """Return one backup's ``--json`` entry: the manifest, or for an unreadable one its id and the error."""
    where = {"storage": storages[0], "storages": storages}
    if isinstance(item, catalog.BadManifest):
        return {"id": item.backup_id, "target": item.target, "unreadable": True, "error": item.error} | where
    return item.to_dict() | where | {"future_dated": is_future(item.snapshot_time, now), "unreadable": False}


def _table_row(storages: list[str], item: Manifest | catalog.BadManifest, now: datetime) -> list[str]:
    """Return one backup's row of the table; an unreadable manifest's row says so in KIND and AGE."""
    if isinstance(item, catalog.BadManifest):
        return [item.backup_id, item.target, "UNREADABLE", "-", "-", "-", ",".join(storages), ""]
    return [
        item.id,
        item.target,
        item.kind,
        format_time(item.snapshot_time),
        # A wrong host clock: say so instead of a negative age (never picked as "latest").
        "FUTURE-DATED" if is_future(item.snapshot_time, now) else format_duration(now - item.snapshot_time),
        format_size(item.size),
        ",".join(storages),
        ",".join(item.labels),
    ]


def _held_backups(
    app: AppContext, target: str, only: str | None
) -> list[tuple[list[str], Manifest | catalog.BadManifest]]:
    """Return (every storage holding it, primary first; its manifest) per backup of ``target``, newest first.

    A manifest that exists but cannot be read is returned as its ``BadManifest`` (one per id, with
    the storages where it is unreadable), so a corrupt backup is shown rather than hidden. The
    primary (or ``only``) must be listable (its error propagates); a secondary that cannot be
    listed is a warning on stderr, so an offsite outage never hides the primary's list.
    """
    config = app.target(target)
    held: dict[str, tuple[list[str], Manifest]] = {}
    unreadable: dict[str, tuple[list[str], catalog.BadManifest]] = {}
    for storage_name in [only] if only else config.storages:
        bad: list[catalog.BadManifest] = []
        try:
            manifests = list_backups(app.storage(storage_name), target, bad=bad)
        except OpskitError as exc:
            if only or storage_name == config.primary_storage:
                raise
            click.echo(f"opskit: warning: storage '{storage_name}' not listed: {exc.one_line()}", err=True)
            continue
        for m in manifests:
            held.setdefault(m.id, ([], m))[0].append(storage_name)
        for b in bad:
            unreadable.setdefault(b.backup_id, ([], b))[0].append(storage_name)
    rows: list[tuple[list[str], Manifest | catalog.BadManifest]] = [*held.values(), *unreadable.values()]
    # A backup id starts with its snapshot's UTC time, so an unreadable one sorts by it too.
    return sorted(rows, key=lambda row: _sort_key(row[1]), reverse=True)


def _sort_key(item: Manifest | catalog.BadManifest) -> tuple[datetime, str]:
    """Return the newest-first sort key: the snapshot time (an unreadable one's from its id), then the id."""
    if isinstance(item, catalog.BadManifest):
        try:
            return (datetime.strptime(item.backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), item.backup_id)
        except ValueError:  # not an id opskit wrote: last
            return (datetime.min.replace(tzinfo=UTC), item.backup_id)
    return (item.snapshot_time, item.id)


def register(group: click.Group) -> None:
    """Add the ``backup`` command group (with pin/unpin/verify when available)."""
    from opskit.cli.backup_extra import register_backup_commands

    register_backup_commands(backup_group)
    group.add_command(backup_group)
