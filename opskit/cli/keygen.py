"""``opskit keygen``: a new age identity and its recipient."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pyrage

from opskit.core.errors import ConfigError


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
    fd = _create_private(out)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(text)
    click.echo(f"identity written to {out} (mode 0600); keep it away from the database host")
    click.echo(f"recipient: {recipient}")


def _create_private(out: Path) -> int:
    """Return a descriptor of ``out``, newly created with mode 0600.

    Raises ConfigError (exit 2, one line) when ``out`` exists (an identity is never overwritten),
    its directory is missing, or it cannot be created there.
    """
    try:
        return os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{out} exists; refusing to overwrite an identity", hint="give another --out") from None
    except FileNotFoundError as exc:
        if out.parent.is_dir():  # a directory that takes no new files (/proc): say what the system said
            raise ConfigError(
                f"cannot write the identity to {out}: {exc.strerror}", hint="give another --out"
            ) from None
        raise ConfigError(
            f"cannot write the identity to {out}: the directory {out.parent} does not exist",
            hint="create it first (keep it private) or give another --out",
        ) from None
    except OSError as exc:
        # A read-only or foreign directory: the path given is wrong (exit 2), not a bug.
        raise ConfigError(
            f"cannot write the identity to {out}: {exc.strerror or exc}", hint="give another --out"
        ) from None


def register(group: click.Group) -> None:
    """Add ``keygen``."""
    group.add_command(keygen)
