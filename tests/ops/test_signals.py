"""The same signals from the command line as from the daemon: pings, webhooks, hooks and run records.

Every test runs ``python -m opskit`` as a subprocess against the local PostgreSQL and a file
storage, with a loopback HTTP receiver standing in for healthchecks.io and the webhook, because
a CronJob user sees only what reaches those and what is left in the storage.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import psycopg

from opskit.catalog.runs import count_runs
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.faults.helpers import PG_ADMIN_DSN, Setup, database, write_setup
from tests.ops.test_notify import Receiver, receiver

__all__ = ["database", "receiver"]


def notify_toml(receiver: Receiver, **extra: str) -> str:
    lines = [
        "[notify]",
        f'webhooks = ["{receiver.url}/hook"]',
        f'ping_urls = {{ backup = "{receiver.url}/ping/backup", prune = "{receiver.url}/ping/prune" }}',
        'timeout = "2s"',
        "attempts = 1",
    ]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def textfile_runs(setup: Setup, tmp_path: Path) -> dict[str, float]:
    """Return {result: value} of opskit_backup_runs_total{target="app"} in a fresh ``metrics --textfile``."""
    path = tmp_path / "opskit.prom"
    result = setup.run("metrics", "--textfile", str(path))
    assert result.returncode == 0, result.stderr
    values: dict[str, float] = {}
    for line in path.read_text().splitlines():
        if line.startswith("opskit_backup_runs_total{") and 'target="app"' in line:
            outcome = line.split('result="', 1)[1].split('"', 1)[0]
            values[outcome] = float(line.rsplit(" ", 1)[1])
    return values


def test_a_cli_backup_pings_its_own_check_at_start_and_success_and_leaves_a_run_record(
    tmp_path: Path, database: str, local_storage: StorageConfig, receiver: Receiver
) -> None:
    setup = write_setup(tmp_path, database, local_storage, extra=notify_toml(receiver))
    result = setup.run("backup", "now")
    assert result.returncode == 0, result.stderr
    assert receiver.paths() == ["/ping/backup/start", "/ping/backup"]  # no webhook: on_success is off
    body = receiver.requests[1][1].decode()
    assert "exit code: 0" in body and "backup: " in body
    assert count_runs(open_storage(local_storage), "app", "backup") == {"success": 1}
    assert textfile_runs(setup, tmp_path) == {"success": 1, "failure": 0, "aborted": 0}


def test_a_failed_cli_backup_pings_fail_with_its_exit_code_and_the_textfile_counts_the_failure(
    tmp_path: Path, database: str, local_storage: StorageConfig, receiver: Receiver
) -> None:
    setup = write_setup(
        tmp_path, database + "_missing", local_storage, extra=notify_toml(receiver)
    )  # a database that does not exist: the backup fails in preflight
    before = textfile_runs(setup, tmp_path)
    result = setup.run("backup", "now")
    assert result.returncode == 3, result.stderr
    assert receiver.paths() == ["/ping/backup/start", "/ping/backup/fail", "/hook"]
    assert "exit code: 3" in receiver.requests[1][1].decode()
    webhook = json.loads(receiver.requests[2][1])
    assert webhook["event"] == "failure" and webhook["exit_code"] == 3 and webhook["target"] == "app"
    after = textfile_runs(setup, tmp_path)
    # What OpskitBackupRunFailed's increase(...[1h]) > 0 sees between two textfile scrapes.
    assert before["failure"] == 0 and after["failure"] == 1


def test_a_prune_run_pings_the_prune_check_not_the_backup_one_and_a_dry_run_pings_nothing(
    tmp_path: Path, database: str, local_storage: StorageConfig, receiver: Receiver
) -> None:
    setup = write_setup(tmp_path, database, local_storage, extra=notify_toml(receiver))
    assert setup.run("prune", "--dry-run").returncode == 0
    assert receiver.paths() == []
    result = setup.run("prune")
    assert result.returncode == 0, result.stderr
    assert receiver.paths() == ["/ping/prune/start", "/ping/prune"]


def hooks_toml(tmp_path: Path, before_on_failure: str = "fail", before_exit: int = 0) -> str:
    log = tmp_path / "hooks.log"
    dump_env = "echo $OPSKIT_HOOK $OPSKIT_VERB $OPSKIT_TARGET backup_id=$OPSKIT_BACKUP_ID exit=$OPSKIT_EXIT_CODE"
    return textwrap.dedent(
        f"""\
        [hooks]
        timeout = "30s"

        [[hooks.before]]
        verbs = ["backup"]
        command = ["sh", "-c", "{dump_env} >> {log}; echo frozen >&2; exit {before_exit}"]
        on_failure = "{before_on_failure}"

        [[hooks.after]]
        verbs = ["backup"]
        sql = "CREATE TABLE hook_ran AS SELECT 'after backup ' || current_setting('application_name') AS note"

        [[hooks.after]]
        command = ["sh", "-c", "{dump_env} >> {log}"]

        [[hooks.on_error]]
        command = ["sh", "-c", "{dump_env} >> {log}"]
        """
    )


def test_hooks_run_before_and_after_a_backup_with_the_run_in_their_environment(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup = write_setup(tmp_path, database, local_storage, extra=hooks_toml(tmp_path))
    result = setup.run("backup", "now", "--json")
    assert result.returncode == 0, result.stderr
    backup_id = json.loads(result.stdout)["id"]
    lines = (tmp_path / "hooks.log").read_text().splitlines()
    assert lines == ["before backup app backup_id= exit=", f"after backup app backup_id={backup_id} exit="]
    with psycopg.connect(f"{PG_ADMIN_DSN.replace('dbname=test', '')} dbname={database}") as conn:
        assert conn.execute("SELECT note FROM hook_ran").fetchone() == ("after backup opskit hook",)


def test_a_failing_before_hook_stops_the_backup_with_one_line_and_runs_the_on_error_hooks(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup = write_setup(tmp_path, database, local_storage, extra=hooks_toml(tmp_path, before_exit=3))
    result = setup.run("backup", "now")
    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert errors == [
        "opskit: error: before hook hooks.before[0] failed: sh exited with 3: frozen; "
        'fix the hook, or set on_failure = "warn" at hooks.before[0]'
    ]
    assert setup.backups() == []  # nothing was backed up
    lines = (tmp_path / "hooks.log").read_text().splitlines()
    assert lines == ["before backup app backup_id= exit=", "on_error backup app backup_id= exit=4"]


def test_a_failing_before_hook_set_to_warn_lets_the_backup_run(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup = write_setup(
        tmp_path, database, local_storage, extra=hooks_toml(tmp_path, before_on_failure="warn", before_exit=3)
    )
    result = setup.run("backup", "now")
    assert result.returncode == 0, result.stderr
    assert len(setup.backups()) == 1


def test_prune_folds_run_records_older_than_keep_runs_and_the_textfile_count_stays_the_same(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    from datetime import UTC, datetime, timedelta

    from opskit.catalog.runs import RunRecord, write_run

    setup = write_setup(tmp_path, database, local_storage)
    store = open_storage(local_storage)
    old = datetime.now(UTC) - timedelta(days=120)
    for result in ("failure", "success"):
        write_run(
            store, RunRecord("app", "backup", result, old, old + timedelta(seconds=3), 0 if result == "success" else 4)
        )
    assert setup.run("backup", "now").returncode == 0
    before = textfile_runs(setup, tmp_path)

    result = setup.run("prune", "--json")

    assert result.returncode == 0, result.stderr
    (pruned,) = json.loads(result.stdout)["results"]
    assert len(pruned["runs_folded"]) == 2
    records = [info.key for info in store.list("app/runs/")]
    assert len([k for k in records if "/tally-" in k]) == 1
    assert len(records) == 3  # the tally, the backup's record and the prune's own record
    assert textfile_runs(setup, tmp_path) == before == {"success": 2, "failure": 1, "aborted": 0}
