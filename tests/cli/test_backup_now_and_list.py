"""``backup now`` and ``backup list`` through the real process: what --json says about failures and interrupts,
what the labels may hold, and a backup whose manifest cannot be read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.cli.test_conventions import write_targets
from tests.databases import dsn_for, run_sql
from tests.faults.helpers import cli_env, run_opskit, wait_for

DOWN_DSN = "host=127.0.0.1 port=1 user=postgres dbname=nothing connect_timeout=2"


def write_config(folder: Path, dbname: str, extra: str = "") -> Path:
    """Write targets ``app`` (on ``dbname``) and ``down`` (a port nothing listens on), one local storage."""
    return write_targets(folder, {"app": dsn_for(dbname), "down": DOWN_DSN}, extra)


def test_backup_all_with_json_lists_the_failed_target_beside_the_manifests(tmp_path: Path, pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    config = write_config(tmp_path, pg_database)

    result = run_opskit(config, "backup", "now", "--all", "--json")

    assert result.returncode == 3, result.stderr
    entries = json.loads(result.stdout)
    [manifest] = [e for e in entries if "id" in e]
    [failed] = [e for e in entries if "id" not in e]
    assert manifest["target"] == "app"
    assert failed["target"] == "down" and failed["ok"] is False
    assert failed["exit_code"] == 3 and failed["type"] == "UnreachableError"
    assert failed["message"] and "hint" in failed
    assert "opskit: error: backup of target 'down' failed" in result.stderr


def test_an_interrupted_run_with_json_prints_the_error_object_and_exits_130(tmp_path: Path, pg_database: str) -> None:
    started = tmp_path / "hook-started"
    hook = f'[[hooks.before]]\nverbs = ["backup"]\ncommand = ["sh", "-c", "touch {started}; exec sleep 60"]\n'
    config = write_config(tmp_path, pg_database, hook)
    cli = subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(config), "backup", "now", "--target", "app", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        wait_for(started.exists, what="the before hook to start")
        cli.send_signal(signal.SIGTERM)
        stdout, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cli.pid, signal.SIGKILL)  # the hook's sleep, if the CLI left it behind

    assert cli.returncode == 130, stderr
    (line,) = stdout.splitlines()
    error = json.loads(line)["error"]
    assert error["exit_code"] == 130 and error["type"] == "Interrupted"
    assert "SIGTERM" in error["message"]
    assert "interrupted" in stderr


def test_a_backup_whose_manifest_is_unreadable_is_listed_as_unreadable(tmp_path: Path, pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    config = write_config(tmp_path, pg_database)
    assert run_opskit(config, "backup", "now", "--target", "app").returncode == 0
    assert run_opskit(config, "backup", "now", "--target", "app").returncode == 0
    [newer, older] = json.loads(run_opskit(config, "backup", "list", "--json").stdout)
    (tmp_path / "backups" / "app" / older["id"] / "manifest.json").write_text('{"id": "truncated')

    table = run_opskit(config, "backup", "list")
    listed = run_opskit(config, "backup", "list", "--json")

    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if older["id"] in line]
    assert "UNREADABLE" in row and "local" in row
    assert f"backup {older['id']} of target 'app' in local" in table.stderr
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["id"], e["unreadable"]) for e in entries] == [(newer["id"], False), (older["id"], True)]
    assert entries[1]["storages"] == ["local"] and entries[1]["error"]


def test_labels_with_control_characters_commas_or_nothing_are_refused_with_exit_2(
    tmp_path: Path, pg_database: str
) -> None:
    config = write_config(tmp_path, pg_database)

    for label in ("two\nlines", "tab\there", "a,b", "", "  "):
        result = run_opskit(config, "backup", "now", "--target", "app", "--label", label)

        assert result.returncode == 2, (label, result.stderr)
        assert "--label" in result.stderr
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("manifest.json"))

    kept = run_opskit(config, "backup", "now", "--target", "app", "--label", "before upgrade 16", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["labels"] == ["before upgrade 16"]
