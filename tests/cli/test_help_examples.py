"""The examples in the main verbs' --help: shown, and accepted by the verb's own option parser."""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from opskit.cli import main
from opskit.cli.examples import EXAMPLES

ALL_EXAMPLES = [(path, example) for path, rows in EXAMPLES.items() for _, example in rows]


def parse(args: list[str]) -> click.Command:
    """Parse ``opskit ARGS`` down to the last command without running it; return that command."""
    command: click.Command = main
    ctx = command.make_context("opskit", list(args))
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest and command.invoke_without_command:
            break  # `opskit migrate -t app`: the group itself runs
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None
        command = sub
        ctx = command.make_context(str(name), rest, parent=ctx)
    return command


@pytest.mark.parametrize(("path", "example"), ALL_EXAMPLES, ids=[example for _, example in ALL_EXAMPLES])
def test_every_example_parses_with_the_verbs_own_options(path: str, example: str) -> None:
    words = shlex.split(example)
    assert words[0] == "opskit"
    command = parse(words[1:])
    assert command.name == path.split()[-1]


def test_an_example_with_an_unknown_option_is_caught() -> None:
    with pytest.raises(click.NoSuchOption):
        parse(["prune", "--target", "app", "--dry-rnu"])


@pytest.mark.parametrize("path", sorted(EXAMPLES))
def test_the_examples_appear_in_help(path: str) -> None:
    result = CliRunner().invoke(main, [*path.split(), "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.output
    assert EXAMPLES[path][0][1] in result.output
