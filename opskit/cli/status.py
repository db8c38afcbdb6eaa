"""``opskit status``: backups, RPO, 3-2-1, last verify and last drill per target; exit 6 on a breach."""

from __future__ import annotations

from datetime import timedelta

import click

from opskit import actions
from opskit.cli import pass_app
from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.units import format_size
from opskit.ops import status as status_action
from opskit.plan.objectives import short


@click.command("status")
@click.option("--target", "-t", help="Only this target (default: every target that is not a staging target).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_app
def status(app: AppContext, target: str | None, as_json: bool) -> None:
    """Show whether each target meets its objectives. Exit 6 when an objective is breached."""
    report = actions.call("status", app, target=target)
    if as_json:
        echo_json(report.to_dict())
    else:
        for index, item in enumerate(report.targets):
            if index:
                click.echo("")
            _render(item)
    report.raise_for_breach()


def _render(item: status_action.TargetStatus) -> None:
    click.echo(f"target {item.target}")
    newest = item.newest
    if newest is None:
        click.echo("  newest backup: none")
    else:
        click.echo(
            f"  newest backup: {newest.id}, snapshot {newest.snapshot_time:%Y-%m-%d %H:%M:%SZ} "
            f"({short(item.now - newest.snapshot_time)} ago), {format_size(newest.size)}, "
            f"in {', '.join(item.holders)}"
        )
    click.echo(f"  RPO: {item.rpo.explain()} [{item.rpo.status}]")
    if item.pitr is not None:
        pitr = item.pitr
        if "error" in pitr:
            click.echo(f"  PITR: archive unreadable: {pitr['error']}")
        else:
            rpo = (
                f"RPO {short(timedelta(seconds=pitr['rpo_seconds']))}" if pitr["rpo_seconds"] is not None else "no WAL"
            )
            click.echo(
                f"  PITR window: {pitr['oldest_restorable']} .. {pitr['newest_wal_archived_at'] or '-'} ({rpo}, "
                f"{pitr['base_backups']} base backups)"
            )
    if item.wal is not None:
        click.echo(f"  WAL: {_wal_line(item.wal)}")
    for state in item.storages:
        if state.error:
            where = f"ERROR {state.error}"
        elif state.backups == 0:
            where = "no backups"
        elif state.newest_id is None:
            where = f"{state.backups} backups, none dated before now"  # every one is future-dated
        else:
            where = f"{state.backups} backups, newest {state.newest_id}"
        if state.without_wal:
            where += f", {len(state.without_wal)} base backup(s) WITHOUT the WAL they need"
        click.echo(f"  storage {state.name} ({state.kind}{', offsite' if state.offsite else ''}): {where}")
        if state.object_lock_detail is not None:
            locked = (
                f"newest immutable until {state.immutable_until:%Y-%m-%d %H:%M:%SZ}"
                if state.immutable_until
                else "newest NOT immutable"
            )
            click.echo(f"    immutability: {locked} ({state.object_lock_detail})")
    verdict = "holds" if item.three_two_one else "does NOT hold"
    click.echo(
        f"  3-2-1 {verdict}: {item.copies} copies, kinds {', '.join(item.kinds) or 'none'}, "
        f"offsite {', '.join(item.offsite) or 'none'}"
    )
    verify = item.last_verify
    click.echo(
        "  last verify: "
        + (
            "never"
            if verify is None
            else f"{verify['time']} backup {verify['backup_id']} ({verify['level']}): {verify['verdict']}"
        )
    )
    drill = item.last_drill
    if drill is None:
        click.echo("  last drill: never")
    else:
        rto = item.rto
        rto_text = (
            f", RTO measured {short(rto.measured)}, estimated {short(rto.estimated)} "
            f"(target {short(rto.target)}): {rto.status}"
            if rto
            else ""
        )
        click.echo(f"  last drill: {drill['finished_at']} {drill['verdict']}{rto_text}")
    for text in item.breaches:
        click.echo(f"  BREACHED {text}")
    for text in item.warnings:
        click.echo(f"  warning: {text}")


def _wal_line(wal: dict[str, object]) -> str:
    """Return the one line of WAL figures: slot lag, archive lag, spool (what is known)."""

    def size(value: object) -> str:
        return format_size(value) if isinstance(value, int) else "unknown"

    parts = []
    if wal.get("slot") and (wal.get("slot_exists") or "error" in wal):
        parts.append(f"slot {wal['slot']} lag {size(wal.get('slot_lag_bytes'))}")
    elif wal.get("slot"):
        parts.append(f"slot {wal['slot']} absent on the server")
    parts.append(f"archive lag {size(wal.get('archive_lag_bytes'))}")
    if wal.get("spool_limit_bytes") is not None:
        parts.append(f"spool {size(wal.get('spool_bytes'))} of {size(wal.get('spool_limit_bytes'))}")
    if wal.get("error"):
        parts.append(f"server unreadable: {wal['error']}")
    return ", ".join(parts)


def register(group: click.Group) -> None:
    """Add ``status``."""
    group.add_command(status)
