"""``opskit metrics``: print the Prometheus metrics, or write them for node_exporter's textfile collector."""

from __future__ import annotations

from pathlib import Path

import click

from opskit.context import AppContext


def register(group: click.Group) -> None:
    """Add the ``metrics`` command to the CLI group."""
    from opskit.cli import pass_app

    @group.command("metrics")
    @click.option(
        "--textfile",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to this file atomically (e.g. /var/lib/node_exporter/textfile/opskit.prom) instead of printing.",
    )
    @click.option("--target", "-t", "targets", multiple=True, help="Only these targets (repeatable; default: all).")
    @pass_app
    def metrics(app: AppContext, textfile: Path | None, targets: tuple[str, ...]) -> None:
        """Compute the metrics the daemon serves on /metrics from the stored catalog.

        For setups that run opskit from cron or a Kubernetes CronJob instead of the daemon.
        opskit_backup_runs_total counts the run records every backup leaves in its target's
        primary storage, so a failed CronJob backup shows up here (and fires OpskitBackupRunFailed).
        """
        from opskit.ops.metrics import Metrics

        for name in targets:
            app.target(name)  # unknown target: ConfigError naming the configured ones
        registry = Metrics()
        registry.refresh(app, list(targets) or None)
        # One process per call: its run counter is the repository's run records, not this process's runs.
        registry.count_stored_runs(app, list(targets) or None)
        if textfile is None:
            click.echo(registry.exposition().decode("utf-8"), nl=False)
        else:
            registry.write_textfile(textfile)
