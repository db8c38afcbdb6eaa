"""Output helpers shared by the commands: aligned tables and JSON documents on stdout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

# ctx.meta key: the command has printed its JSON document, so a failure after it adds none.
JSON_DOCUMENT_PRINTED = "opskit.json_document_printed"


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON (datetimes and other objects as strings).

    Under ``--json`` stdout carries exactly one document: once a command has printed its own
    (a failed drill's report, say), a later error is not printed as a second one.
    """
    click.echo(json.dumps(data, indent=2, default=str))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[JSON_DOCUMENT_PRINTED] = True


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under headers, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            click.echo("  ".join("-" * w for w in widths))
