"""``opskit daemon``: run scheduled jobs with health and metrics endpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from opskit.context import AppContext


def register(group: click.Group) -> None:
    """Add the ``daemon`` command to the CLI group."""
    from opskit.cli import pass_app

    @group.command("daemon")
    @click.option(
        "--jobs-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Directory of *.toml job files (default: daemon.jobs_dir, else ./jobs).",
    )
    @click.option(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help="Address of /livez, /readyz and /metrics (default: daemon.listen, else 0.0.0.0:9187).",
    )
    @pass_app
    def daemon(app: AppContext, jobs_dir: Path | None, listen: str | None) -> None:
        """Run scheduled jobs until SIGTERM/SIGINT, serving /livez, /readyz and /metrics.

        Several replicas may run against one control database: each scheduled slot runs once.
        On SIGTERM the running job gets the shutdown grace period to finish, then is aborted
        cleanly (no manifest written) and the daemon exits 0. SIGHUP re-reads the job files
        (a bad one is refused and the current jobs keep running).
        """
        from opskit.daemon import service

        sys.exit(service.run(app, jobs_dir=jobs_dir, listen=listen))
