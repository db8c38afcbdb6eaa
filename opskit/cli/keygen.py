"""``opskit keygen``: a new age identity and its recipient."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pyrage


@click.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the identity to this file (mode 0600) and print only the recipient.",
)
def keygen(out: Path | None) -> None:
    """Print a new age identity (private) and its recipient (public key for [encryption] recipients)."""
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = f"# public key: {recipient}\n{identity}\n"
    if out is None:
        click.echo(text, nl=False)
        return
    if out.exists():
        raise click.UsageError(f"{out} exists; refusing to overwrite an identity")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    click.echo(f"identity written to {out} (mode 0600); keep it away from the database host")
    click.echo(f"recipient: {recipient}")


def register(group: click.Group) -> None:
    """Add ``keygen``."""
    group.add_command(keygen)
