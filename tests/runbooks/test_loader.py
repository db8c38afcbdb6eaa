"""A runbook file is checked step by step by its kind, and every problem is named at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from opskit.core.errors import ConfigError
from opskit.runbooks import loader
from opskit.runbooks.model import OK, RunbookResult, StepResult
from opskit.runbooks.transcript import render_transcript

BAD = """
[[steps]]
kind = "opskit"
command = []
action = "backup"
timeout = "soon"
bogus = 1
[[steps]]
kind = "sql"
query = "SELECT 1"
[[steps]]
kind = "weird"
[[steps]]
kind = "confirm"
"""


def test_every_problem_of_every_step_is_named_in_order(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)

    with pytest.raises(ConfigError) as caught:
        loader.load(path)

    message = caught.value.one_line()
    expected = [
        "At 'steps[0].bogus': is not a key of a 'opskit' step (action, allow_exit, args, command, timeout)",
        "At 'steps[0]': an 'opskit' step needs exactly one of 'command' (CLI argv) or 'action'",
        "At 'steps[0].action': must be one of restore-globals, status, verify",
        "At 'steps[0].command': must be a non-empty list of strings",
        "At 'steps[0].timeout': 'soon' is not a duration",
        "At 'steps[1].target': is required in a 'sql' step",
        "At 'steps[2].kind': must be one of opskit, sql, shell, confirm, note, not 'weird'",
        "At 'steps[3].prompt': is required in a 'confirm' step",
    ]
    positions = [message.index(text) for text in expected]
    assert positions == sorted(positions)


def test_steps_without_a_name_are_named_by_what_they_run(tmp_path: Path) -> None:
    path = tmp_path / "book.toml"
    path.write_text(
        '[[steps]]\nkind = "opskit"\ncommand = ["status"]\n'
        '[[steps]]\nkind = "opskit"\naction = "verify"\n'
        '[[steps]]\nkind = "shell"\nargv = ["pg_isready", "-q"]\n'
        '[[steps]]\nkind = "confirm"\nprompt = "go?"\n'
    )

    book = loader.load(path)

    assert [step.name for step in book.steps] == ["opskit status", "opskit verify", "pg_isready -q", "confirm"]


def test_the_transcript_describes_each_step_except_notes(tmp_path: Path) -> None:
    path = tmp_path / "book.toml"
    path.write_text('[[steps]]\ntext = "read me"\n[[steps]]\nkind = "shell"\nargv = ["true"]\n')
    book = loader.load(path)
    note, shell = book.steps
    result = RunbookResult(book, {"run_id": "r"}, dry_run=False)
    result.results = [
        StepResult(note, OK, output="read me", rendered={"text": "read me"}),
        StepResult(shell, OK, rendered={"argv": ["true"]}),
    ]

    transcript = render_transcript(result)

    assert "### 1. note (note): ok, 0.0 s\n\n```\nread me\n```" in transcript
    assert "### 2. true (shell): ok, 0.0 s\n\nRun: true\n" in transcript


def test_runbook_list_without_runbooks_names_every_directory_it_looked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from opskit.cli import main

    config = tmp_path / "opskit.toml"
    config.write_text(f'[targets.a]\ndsn = "dbname=x"\nstorages = ["l"]\n[storages.l]\nurl = "file://{tmp_path}/r"\n')

    monkeypatch.chdir(tmp_path)  # not the checkout, whose ./runbooks would be found
    listed = CliRunner().invoke(main, ["--config", str(config), "runbook", "list"])

    assert listed.exit_code == 0, listed.output
    assert f"no runbooks (looked in {tmp_path.resolve() / 'runbooks'}, " in listed.output
    assert "put *.toml files in one of them or pass --dir" in listed.output
