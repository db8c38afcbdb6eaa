"""Command-line conventions, through the real `opskit` process: --json errors, --quiet, and shell
completion of targets and backup ids (click's `_OPSKIT_COMPLETE` protocol)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.databases import dsn_for, run_sql
from tests.faults.helpers import cli_env


def write_targets(folder: Path, dsns: dict[str, str], extra: str = "") -> Path:
    """Write ``folder/opskit.toml``: a target per name in ``dsns``, each on the local storage ``folder/backups``.

    ``extra`` is appended at the top level. Returns the file's path.
    """
    targets = "".join(f'[targets.{name}]\ndsn = "{dsn}"\nstorages = ["local"]\n\n' for name, dsn in dsns.items())
    path = folder / "opskit.toml"
    path.write_text(targets + f'[storages.local]\nurl = "file://{folder / "backups"}"\n' + extra)
    return path


def write_config(folder: Path, dbname: str) -> Path:
    """Write targets ``app`` and ``app-staging``, both on ``dbname``, and one local storage."""
    return write_targets(folder, {"app": dsn_for(dbname), "app-staging": dsn_for(dbname)})


def opskit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opskit", *args], capture_output=True, text=True, env=cli_env(env), timeout=120
    )


def complete(config: Path, words: str) -> list[str]:
    """Return what bash completion offers after ``opskit <words>`` (the last word is the one being typed)."""
    line = f"opskit --config {config} {words}"
    parts = line.split(" ")
    result = subprocess.run(
        [sys.executable, "-c", "from opskit.cli import main; main(prog_name='opskit')"],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env({"_OPSKIT_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(parts) - 1)}),
    )
    assert result.returncode == 0, result.stderr
    return [row.split(",", 1)[1] for row in result.stdout.splitlines() if row.startswith("plain,")]


def test_with_json_an_error_is_one_json_object_on_stdout_and_one_line_on_stderr(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgres")
    result = opskit("--config", str(config), "backup", "list", "--target", "nope", "--json")
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    error = json.loads(line)["error"]
    assert error["exit_code"] == 2 and error["type"] == "ConfigError" and "nope" in error["message"]
    assert [row for row in result.stderr.splitlines() if row.startswith("opskit: error:")]


def test_without_json_an_error_prints_nothing_on_stdout(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgres")
    result = opskit("--config", str(config), "backup", "list", "--target", "nope")
    assert result.returncode == 2 and result.stdout == ""


def test_quiet_leaves_only_warnings_and_the_result(tmp_path: Path, pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    config = write_config(tmp_path, pg_database)
    loud = opskit("--config", str(config), "--log-format", "json", "backup", "now", "--target", "app")
    quiet = opskit("--config", str(config), "--log-format", "json", "--quiet", "backup", "now", "--target", "app")
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert any('"level": "info"' in line for line in loud.stderr.splitlines())
    assert not any('"level": "info"' in line for line in quiet.stderr.splitlines())


def test_target_names_complete_after_target(tmp_path: Path) -> None:
    config = write_config(tmp_path, "postgres")
    assert complete(config, "backup now --target ") == ["app", "app-staging"]
    assert complete(config, "restore latest -t app-") == ["app-staging"]


def test_backup_ids_complete_from_the_targets_storage(tmp_path: Path, pg_database: str) -> None:
    config = write_config(tmp_path, pg_database)
    done = opskit("--config", str(config), "backup", "now", "--target", "app", "--json")
    assert done.returncode == 0, done.stderr
    (backup_id,) = listed_ids(config)
    assert complete(config, "backup verify --target app ") == ["latest", backup_id]
    assert complete(config, f"restore --target app {backup_id[:4]}") == [backup_id]


def test_completion_with_a_broken_config_offers_nothing_and_prints_no_error(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text("[targets.app\n")
    assert complete(config, "backup now --target ") == []


def listed_ids(config: Path) -> list[str]:
    result = opskit("--config", str(config), "backup", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [row["id"] for row in json.loads(result.stdout)]


@pytest.fixture(autouse=True)
def _no_stray_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSKIT_CONFIG", raising=False)


def test_a_reader_that_leaves_early_ends_the_run_with_141_and_no_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "opskit_t_no_such_database")
    with subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(config), "backup", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(None),
    ) as run:
        assert run.stdout is not None and run.stderr is not None
        run.stdout.close()  # the reader is gone before the first line: `| head -0`
        stderr = run.stderr.read().decode()
        assert run.wait(timeout=60) == 141
    assert stderr == ""
