"""``opskit config check``: a table of OK/WARN/FAIL for the whole configuration, or ``--json``."""

from __future__ import annotations

import click

from opskit.cli import LazyContext
from opskit.cli.render import echo_json, echo_table
from opskit.core.errors import ConfigError
from opskit.ops import config_check


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def check(obj: LazyContext, as_json: bool) -> None:
    """Validate the config, resolve every secret, connect to every target, check client tool
    versions, probe every storage and the age identity. Exits with the highest failure's code
    (2 config, 3 unreachable); secrets are never printed.
    """
    try:
        app = obj.app
    except ConfigError as exc:
        # The config did not load: report its problems as failed checks rather than one long line.
        report = config_check.report_for_config_error(exc, obj.config_path)
    else:
        report = config_check.run(app)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_table(["CHECK", "STATUS", "DETAIL"], [(r.check, r.status, r.detail) for r in report.results])
        summary = report.to_dict()["summary"]
        verdict = "all checks passed" if report.ok else f"FAILED (exit {report.exit_code})"
        click.echo(f"\n{summary['ok']} ok, {summary['warn']} warning(s), {summary['fail']} failed: {verdict}")
    if not report.ok:
        click.get_current_context().exit(report.exit_code)


def register(group: click.Group) -> None:
    """Add ``config check`` (creating the ``config`` group unless another module already did)."""
    config_group = group.commands.get("config")
    if not isinstance(config_group, click.Group):
        config_group = click.Group("config", help="Inspect and check the configuration.")
        group.add_command(config_group)
    config_group.add_command(check)
