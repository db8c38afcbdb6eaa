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
    @click.option("--target", "targets", multiple=True, help="Only these targets (repeatable; default: all).")
    @pass_app
    def metrics(app: AppContext, textfile: Path | None, targets: tuple[str, ...]) -> None:
        """Compute the metrics the daemon serves on /metrics from the stored catalog.

        For setups that run opskit from cron or a Kubernetes CronJob instead of the daemon.
        """
        from opskit.ops.metrics import Metrics

        for name in targets:
            app.target(name)  # unknown target: ConfigError naming the configured ones
        registry = Metrics()
        registry.refresh(app, list(targets) or None)
        if textfile is None:
            click.echo(registry.exposition().decode("utf-8"), nl=False)
        else:
            registry.write_textfile(textfile)
