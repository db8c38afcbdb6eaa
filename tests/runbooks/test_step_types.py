"""A runbook file is checked whole when it loads: a step value of the wrong type stops it before any step runs.

Each wrong value below used to load and then fail only when its step ran (an unexpected
``ValueError``, exit 1, no transcript), possibly after earlier steps had acted. Run through the
real CLI where the outcome is the operator's: the exit code, the one error line, what ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from opskit.cli import main
from opskit.core.errors import ConfigError
from opskit.runbooks import loader
from tests.servers import REPO_ROOT

# (a step's TOML, the problem the load names for it), one per field of every kind.
WRONG_VALUES = [
    (
        'kind = "shell"\nname = "Check"\nargv = ["true"]\nexpect_exit = "zero"',
        "step 1 (Check): At 'steps[0].expect_exit': must be an exit code (an integer from 0 to 255), "
        "not the string 'zero'",
    ),
    (
        'kind = "shell"\nargv = ["true"]\nexpect_exit = 300',
        "step 1 (true): At 'steps[0].expect_exit': must be an exit code (an integer from 0 to 255), not the number 300",
    ),
    (
        'kind = "shell"\nargv = "pg_isready"',
        "step 1 (shell): At 'steps[0].argv': must be a non-empty list of strings, not the string 'pg_isready'",
    ),
    (
        'kind = "shell"\nargv = ["sleep", 5]',
        "step 1 (shell): At 'steps[0].argv': must be a non-empty list of strings, not a list",
    ),
    (
        'kind = "shell"\nargv = ["true"]\ntimeout = 30',
        "step 1 (true): At 'steps[0].timeout': must be a duration such as '10m' or '2h', not the number 30",
    ),
    (
        'kind = "opskit"\ncommand = ["status"]\nallow_exit = ["x", 6]',
        "step 1 (opskit status): At 'steps[0].allow_exit': must be a non-empty list of exit codes "
        "(integers from 0 to 255), not a list holding the string 'x'",
    ),
    (
        'kind = "opskit"\ncommand = ["status"]\nallow_exit = 6',
        "step 1 (opskit status): At 'steps[0].allow_exit': must be a non-empty list of exit codes "
        "(integers from 0 to 255), not the number 6",
    ),
    (
        'kind = "opskit"\naction = "status"\nargs = "notatable"',
        "step 1 (opskit status): At 'steps[0].args': must be a table of arguments such as "
        "{ target = \"app\" }, not the string 'notatable'",
    ),
    (
        'kind = "opskit"\naction = "restore-globals"\nargs = { target = "app", destination = "new" }',
        "step 1 (opskit restore-globals): At 'steps[0].args.destination': action 'restore-globals' takes no "
        "argument 'destination' (its arguments: backup, storage, target, to)",
    ),
    (
        'kind = "opskit"\ncommand = ["status"]\nargs = { target = "app" }',
        "step 1 (opskit status): At 'steps[0].args': is for an 'action' step; a 'command' step takes its argv",
    ),
    (
        'kind = "opskit"\ncommand = "status"',
        "step 1 (opskit): At 'steps[0].command': must be a non-empty list of strings, not the string 'status'",
    ),
    (
        'kind = "sql"\ntarget = 1\nquery = "SELECT 1"',
        "step 1 (sql): At 'steps[0].target': must be a non-empty string, not the number 1",
    ),
    (
        'kind = "sql"\ntarget = "app"\ndatabase = ["postgres"]\nquery = "SELECT 1"',
        "step 1 (sql): At 'steps[0].database': must be a non-empty string, not a list",
    ),
    (
        'kind = "sql"\ntarget = "app"\nquery = ["SELECT 1"]',
        "step 1 (sql): At 'steps[0].query': must be a non-empty string, not a list",
    ),
    (
        'kind = "sql"\ntarget = "app"\nquery = "SELECT 1"\nexpect = [1]',
        "step 1 (sql): At 'steps[0].expect': must be a string, number or boolean, not a list",
    ),
    (
        'kind = "sql"\ntarget = "app"\nquery = "SELECT 1"\ncapture = "1st"',
        "step 1 (sql): At 'steps[0].capture': must be a variable name (letters, digits and _, not first a digit), "
        "not the string '1st'",
    ),
    (
        'kind = "confirm"\nprompt = ["a"]',
        "step 1 (confirm): At 'steps[0].prompt': must be a non-empty string, not a list",
    ),
    (
        'kind = "note"\ntext = 5',
        "step 1 (note): At 'steps[0].text': must be a non-empty string, not the number 5",
    ),
    (
        'kind = "note"\ntext = "x"\nwhen = "wal covers"',
        "step 1 (note): At 'steps[0].when': must be a non-empty list of strings, not the string 'wal covers'",
    ),
]


@pytest.mark.parametrize(("step", "problem"), WRONG_VALUES, ids=[p.split(":")[1].strip() for _s, p in WRONG_VALUES])
def test_a_step_value_of_the_wrong_type_is_refused_when_the_file_loads_naming_the_step_and_field(
    tmp_path: Path, step: str, problem: str
) -> None:
    path = tmp_path / "book.toml"
    path.write_text(f"[[steps]]\n{step}\n")

    with pytest.raises(ConfigError) as caught:
        loader.load(path)

    assert caught.value.problems == [problem]
    assert caught.value.one_line() == f"runbook file {path}: {problem}; fix the runbook file; no step was run"


def _books(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Write a runbook whose first step acts and whose second is malformed; return (config, books, the marker)."""
    books = tmp_path / "books"
    books.mkdir()
    acted = tmp_path / "acted"
    (books / "bad.toml").write_text(
        'title = "bad"\n'
        f'[[steps]]\nkind = "shell"\nname = "Acts"\nargv = ["touch", "{acted}"]\n'
        '[[steps]]\nkind = "shell"\nname = "Checks the exit"\nargv = ["true"]\nexpect_exit = "zero"\n'
    )
    config = tmp_path / "opskit.toml"
    config.write_text(f'[tools]\nstate_dir = "{tmp_path}/state"\n')
    return config, books, acted


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("opskit:")]


def test_runbook_run_refuses_a_malformed_file_with_exit_2_before_any_step_runs(tmp_path: Path) -> None:
    config, books, acted = _books(tmp_path)
    transcripts = tmp_path / "transcripts"

    options = ["--dir", str(books), "--transcript-dir", str(transcripts)]
    result = CliRunner().invoke(main, ["--config", str(config), "runbook", "run", "bad", "--yes", *options])

    assert result.exit_code == 2, result.output
    assert _error_lines(result.stderr) == [
        f"opskit: error: runbook file {books / 'bad.toml'}: step 2 (Checks the exit): At 'steps[1].expect_exit': "
        "must be an exit code (an integer from 0 to 255), not the string 'zero'; fix the runbook file; no step was run"
    ]
    assert not acted.exists()  # step 1 never ran
    assert not transcripts.exists()


def test_runbook_list_refuses_a_malformed_file_with_exit_2_naming_it(tmp_path: Path) -> None:
    config, books, _acted = _books(tmp_path)

    result = CliRunner().invoke(main, ["--config", str(config), "runbook", "list", "--dir", str(books)])

    assert result.exit_code == 2, result.output
    [line] = _error_lines(result.stderr)
    assert line.startswith(f"opskit: error: runbook file {books / 'bad.toml'}: step 2 (Checks the exit): ")


def test_every_shipped_runbook_passes_the_checks_of_every_field(tmp_path: Path) -> None:
    books = sorted((REPO_ROOT / "runbooks").glob("*.toml"))

    loaded = [loader.load(path) for path in books]

    assert len(loaded) == len(books) >= 4


def test_a_confirm_step_answered_by_yes_is_shown_as_confirmed_by_yes_not_skipped(tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "ask.toml").write_text('title = "ask"\n[[steps]]\nkind = "confirm"\nprompt = "Cut over now?"\n')
    config = tmp_path / "opskit.toml"
    config.write_text(f'[tools]\nstate_dir = "{tmp_path}/state"\n')
    transcripts = tmp_path / "transcripts"

    options = ["--dir", str(books), "--transcript-dir", str(transcripts)]
    result = CliRunner().invoke(main, ["--config", str(config), "runbook", "run", "ask", "--yes", *options])

    assert result.exit_code == 0, result.output
    assert "    Cut over now? -> yes (confirmed by --yes)\n    -> ok (" in result.stdout
    assert "skipped" not in result.stdout
    [transcript] = transcripts.glob("ask-*.md")
    text = transcript.read_text()
    assert "### 1. confirm (confirm): ok, " in text and "Cut over now? -> yes (confirmed by --yes)" in text
    assert "skipped" not in text
