"""``opskit runbook list | show NAME | run NAME``: executable disaster-recovery runbooks."""

from __future__ import annotations

import sys

import click

from opskit import actions
from opskit.cli import pass_app
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.runbooks import loader

_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    help="Runbooks directory (default: runbooks/ next to the config file, else ./runbooks).",
)


def _parse_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--var '{pair}' is not NAME=VALUE", hint="e.g. --var target=app")
        values[name.strip()] = value
    return values


@click.group("runbook")
def runbook() -> None:
    """Executable DR runbooks: ordered steps, run one by one, with a Markdown transcript."""


@runbook.command("list")
@_DIR
@pass_app
def list_(app: AppContext, directory: str | None) -> None:
    """List the runbooks."""
    books = loader.list_runbooks(app, directory)
    if not books:
        searched = ", ".join(str(path) for path in loader.searched_dirs(app, directory))
        click.echo(f"no runbooks (looked in {searched}); put *.toml files in one of them or pass --dir")
    for book in books:
        click.echo(f"{book.name:<28} {len(book.steps):>2} steps  {book.title}")


@runbook.command("show")
@click.argument("name")
@_DIR
@pass_app
def show(app: AppContext, name: str, directory: str | None) -> None:
    """Show a runbook's variables and steps."""
    book = loader.find(app, name, directory)
    click.echo(f"{book.name}: {book.title}")
    if book.description:
        click.echo(book.description.strip())
    click.echo("")
    for variable in book.variables:
        default = "(required)" if variable.default is None else f"default '{variable.default}'"
        click.echo(f"  var {variable.name}: {default}" + (f"  {variable.help}" if variable.help else ""))
    for step in book.steps:
        click.echo(f"  {step.index}. [{step.kind}] {step.name}")


@runbook.command("run")
@click.argument("name")
@click.option("--var", "pairs", multiple=True, metavar="NAME=VALUE", help="Set a variable (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show each step with its variables filled in; run nothing.")
@click.option("--yes", "-y", is_flag=True, help="Answer yes to every confirmation step.")
@click.option("--transcript-dir", type=click.Path(file_okay=False), help="Where to write the transcript.")
@_DIR
@pass_app
def run(
    app: AppContext,
    name: str,
    pairs: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    transcript_dir: str | None,
    directory: str | None,
) -> None:
    """Run a runbook step by step; stop at the first failing step (exit with its code)."""

    def ask(prompt: str) -> bool:
        return bool(click.confirm(prompt, default=False, err=True))

    result = actions.call(
        "runbook",
        app,
        name=name,
        variables=_parse_vars(pairs),
        dry_run=dry_run,
        yes=yes,
        confirm=ask if sys.stdin.isatty() else None,
        echo=click.echo,
        directory=directory,
        transcript_dir=transcript_dir,
    )
    click.echo(f"transcript: {result.transcript}")
    result.raise_for_outcome()


def register(group: click.Group) -> None:
    """Add ``runbook``."""
    group.add_command(runbook)
