"""``opskit prune``: print each target's retention plan and apply it (or not, with ``--dry-run``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import TYPE_CHECKING

import click

from opskit.cli.render import echo_json
from opskit.context import AppContext
from opskit.core.units import parse_duration

if TYPE_CHECKING:
    from opskit.plan.retention import Plan


def register(group: click.Group) -> None:
    """Add the ``prune`` command to the CLI group."""
    from opskit.cli import pass_app

    @group.command("prune")
    @click.option("--target", "-t", default=None, help="The target to prune (default: the default target).")
    @click.option("--all", "all_targets", is_flag=True, help="Prune every target that has a retention policy.")
    @click.option("--storage", default=None, help="Only this storage (default: all of the target's storages).")
    @click.option("--dry-run", is_flag=True, help="Print the plan; delete nothing.")
    @click.option("--json", "as_json", is_flag=True, help="Print the plan and what was done as JSON.")
    @click.option(
        "--grace",
        default="24h",
        show_default=True,
        help="Leftovers of failed runs (objects with no manifest, S3 multipart uploads) older than this are swept.",
    )
    @pass_app
    def prune(
        app: AppContext,
        target: str | None,
        all_targets: bool,
        storage: str | None,
        dry_run: bool,
        as_json: bool,
        grace: str,
    ) -> None:
        """Delete the backups no retention rule keeps, and sweep leftovers of failed runs.

        Pinned backups, the min_keep newest and the newest verified backup are always kept.
        Exits 4 naming every target/storage that failed; the others are still pruned.
        """
        from opskit import actions
        from opskit.ops import prune as action

        if target and all_targets:
            raise click.UsageError("give --target or --all, not both")
        grace_period = _parse_grace(grace)
        try:
            # A dry run is no run: it sends no ping and leaves no run record (actions.call would).
            run = action.run if dry_run else functools.partial(actions.call, "prune")
            report = run(
                app, target=target, all_targets=all_targets, storage=storage, dry_run=dry_run, grace=grace_period
            )
        except action.PruneFailed as exc:
            _render(exc.report, as_json)
            raise
        _render(report, as_json)


def _parse_grace(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from exc


def _render(report: object, as_json: bool) -> None:
    from opskit.ops.prune import PruneReport

    assert isinstance(report, PruneReport)
    if as_json:
        echo_json(report.to_dict())
        return
    verb = "would delete" if report.dry_run else "deleted"
    for result in report.results:
        click.echo(f"== {result.target} in storage {result.storage}")
        if result.plan is not None:
            click.echo(f"policy: {result.plan.policy.describe()}")
            rows = [
                (
                    d.id,
                    d.kind,
                    f"{d.snapshot_time.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
                    "keep" if d.keep else "DELETE",
                    ", ".join(d.reasons) or "-",
                )
                for d in result.plan.decisions
            ]
            _table(("ID", "KIND", "SNAPSHOT (UTC)", "ACTION", "REASONS"), rows)
        for bad in result.bad_manifests:
            click.echo(f"unreadable manifest left alone: {bad}")
        for refused in result.locked:
            click.echo(f"kept, the storage refused the delete: {refused}")
        if result.plan is not None and len(result.plan.kinds) > 1:
            click.echo(f"by kind: {_per_kind(result.plan, result.deleted, verb)}")
        kept = len(result.plan.kept) if result.plan else 0
        summary = (
            f"{result.target}/{result.storage}: kept {kept}, {verb} {len(result.deleted)}, "
            f"{'would sweep' if report.dry_run else 'swept'} {len(result.swept)} leftover object(s) "
            f"and {len(result.aborted_uploads)} incomplete upload(s)"
        )
        if result.error:
            summary += f"; FAILED: {result.error}"
        click.echo(summary)
    for name, why in sorted(report.skipped.items()):
        click.echo(f"{name}: skipped, {why}")


def _per_kind(plan: Plan, deleted: Sequence[str], verb: str) -> str:
    """Return ``base kept 2, deleted 1; logical kept 2, deleted 0``: the plan's counts of each kind."""
    kinds = {d.id: d.kind for d in plan.decisions}
    return "; ".join(
        f"{kind} kept {sum(1 for d in plan.kept if d.kind == kind)}, "
        f"{verb} {sum(1 for i in deleted if kinds.get(i) == kind)}"
        for kind in plan.kinds
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
