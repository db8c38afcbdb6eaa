"""Runbooks under pressure: secrets in children, hostile variables, installed runbooks, clean output.

Each test runs a real runbook against the local PostgreSQL (issue 17, items 7-9).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from opskit.backup import backup
from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.runbooks import loader, runbook
from tests.runbooks.test_runbook import RUNBOOKS, SERVER, names

__all__ = ["names"]  # the fixture, shared with test_runbook.py


def write_config(tmp_path: Path, names: dict[str, str], password_line: str = "") -> Path:
    """Write an opskit.toml with targets app (its password a secret reference) and staging."""
    config = tmp_path / "conf" / "opskit.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[targets.app]\ndsn = "{SERVER}/{names["app"]}"\nstaging = "staging"\n{password_line}\n'
        f'[targets.staging]\ndsn = "{SERVER}/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[tools]\nstate_dir = "{tmp_path}/state"\n'
    )
    return config


def test_an_opskit_step_resolves_an_env_secret_with_a_password_like_name_as_the_parent_does(
    tmp_path: Path, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", "not-checked-by-trust-auth")
    ctx = AppContext(config=load_config(write_config(tmp_path, names, 'password = "env:APP_DB_PASSWORD"')))
    backup.run(ctx, target="app")
    lines: list[str] = []

    result = runbook.run(
        ctx,
        "quarterly-drill",
        variables={"report_dir": str(tmp_path / "reports")},
        yes=True,
        echo=lines.append,
        directory=RUNBOOKS,
        transcript_dir=tmp_path / "transcripts",
    )

    assert result.ok, "\n".join(lines)
    assert len(list((tmp_path / "reports").glob("*.json"))) == 1


def hostile_book(folder: Path) -> Path:
    """Write a runbook whose sql step shows a variable: the value must come back as data."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "echo.toml").write_text(
        'title = "echo"\n[vars]\nvalue = { required = true }\n'
        '[[steps]]\nkind = "sql"\ntarget = "app"\nquery = "SELECT ${value}::text AS v, 100 % 7 AS m"\n'
    )
    return folder


def test_a_runbook_variable_is_bound_as_a_parameter_never_spliced_into_the_sql(
    tmp_path: Path, names: dict[str, str]
) -> None:
    ctx = AppContext(config=load_config(write_config(tmp_path, names)))
    crafted = "x'::text; CREATE TABLE pwned (id int); SELECT 'y"

    result = runbook.run(
        ctx,
        "echo",
        variables={"value": crafted},
        yes=True,
        directory=hostile_book(tmp_path / "books"),
        transcript_dir=tmp_path / "transcripts",
    )

    assert result.ok
    assert result.results[0].output.splitlines()[1] == f"{crafted} | 2"
    with psycopg.connect(f"{SERVER}/{names['app']}") as conn:
        assert conn.execute("SELECT to_regclass('public.pwned')").fetchone() == (None,)


def test_recover_before_incident_refuses_a_tables_value_that_is_not_a_table_list(
    tmp_path: Path, names: dict[str, str]
) -> None:
    ctx = AppContext(config=load_config(write_config(tmp_path, names)))

    with pytest.raises(ConfigError) as raised:
        runbook.run(
            ctx,
            "recover-before-incident",
            variables={"before": "2026-01-01T00:00:00Z", "tables": "public.orders'); CREATE TABLE pwned(); --"},
            yes=True,
            directory=RUNBOOKS,
            transcript_dir=tmp_path / "transcripts",
        )

    assert "tables=" in raised.value.one_line() and "does not match" in raised.value.one_line()


def test_a_quoted_variable_in_a_query_is_refused_when_the_runbook_loads(tmp_path: Path) -> None:
    book = tmp_path / "quoted.toml"
    book.write_text('[vars]\nv = "a"\n[[steps]]\nkind = "sql"\ntarget = "app"\nquery = "SELECT \'${v}\'"\n')

    with pytest.raises(ConfigError) as raised:
        loader.load(book)

    assert "bound parameter" in raised.value.one_line()


def test_runbooks_are_found_in_the_installed_share_directory(
    tmp_path: Path, names: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    share = hostile_book(tmp_path / "share" / "opskit" / "runbooks")
    monkeypatch.setattr(loader, "SHARE_DIRS", (share,))
    monkeypatch.chdir(tmp_path)  # no ./runbooks here, none beside the config either
    ctx = AppContext(config=load_config(write_config(tmp_path, names)))

    assert loader.find(ctx, "echo").path == share / "echo.toml"


def test_a_child_commands_log_lines_stay_out_and_an_answered_prompt_is_shown_once(
    tmp_path: Path, names: dict[str, str]
) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "chatty.toml").write_text(
        '[[steps]]\nkind = "confirm"\nprompt = "Go ahead?"\n'
        '[[steps]]\nkind = "opskit"\ncommand = ["backup", "now", "--target", "app"]\n'
    )
    ctx = AppContext(config=load_config(write_config(tmp_path, names)))
    lines: list[str] = []
    asked: list[str] = []

    result = runbook.run(
        ctx,
        "chatty",
        confirm=lambda prompt: asked.append(prompt) or True,
        echo=lines.append,
        directory=folder,
        transcript_dir=tmp_path / "transcripts",
    )

    assert result.ok, "\n".join(lines)
    assert asked == ["Go ahead?"]
    assert not any("Go ahead?" in line for line in lines)  # the confirm callback showed it already
    assert not any(line.strip().startswith("{") for line in lines), "\n".join(lines)
