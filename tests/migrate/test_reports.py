"""``opskit migrate`` tells the truth about what was committed: groups, interrupts, rehearsals."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.databases import dsn_for
from tests.migrate.support import opskit, query, start_opskit, write_config, write_staged_config


def _error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("opskit: error: "))


def _versions(dbname: str) -> list[str | None]:
    return [r[0] for r in query(dbname, "SELECT version FROM flyway_schema_history ORDER BY installed_rank")]


def _wait_for_sleep(dbname: str) -> None:
    deadline = time.monotonic() + 30
    while not query(
        dbname,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
        " AND query LIKE '%%pg_sleep%%' AND pid <> pg_backend_pid()",
    ):
        assert time.monotonic() < deadline, "the migration never started its pg_sleep"
        time.sleep(0.05)


def test_with_group_true_a_failure_reports_nothing_applied_and_says_the_whole_group_was_rolled_back(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__gg.sql": "CREATE TABLE gg (i int);", "V2__bad.sql": "SELECT 1/0;"})
    config = write_config(tmp_path, migrate_db, "group = true\n")

    result = opskit(config, "migrate")

    assert result.returncode == 4, result.stderr
    assert "applied" not in result.stdout
    assert "all 2 migration(s) of the group (V1__gg.sql, V2__bad.sql) were rolled back" in _error_line(result.stderr)
    assert query(migrate_db, "SELECT to_regclass('gg')") == [(None,)]
    assert _versions(migrate_db) == []


def test_with_group_true_the_migrations_are_reported_once_the_group_committed(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__a.sql": "CREATE TABLE a (i int);", "V2__b.sql": "CREATE TABLE b (i int);"})
    config = write_config(tmp_path, migrate_db, "group = true\n")

    result = opskit(config, "migrate")

    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("applied")] == [
        "V1__a.sql",
        "V2__b.sql",
    ]
    assert _versions(migrate_db) == ["1", "2"]


def test_an_interrupt_after_a_committed_migration_names_it_and_the_restore_command(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__first.sql": "CREATE TABLE first (id int);", "V2__slow.sql": "SELECT pg_sleep(60);"})
    config = write_config(tmp_path, migrate_db)

    run = start_opskit(config, "migrate", "--backup-first")
    _wait_for_sleep(migrate_db)
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)

    assert run.returncode == 130, err
    assert "nothing was committed" not in err
    assert (
        "opskit: interrupted; this run had committed 1 migration(s) to target 'app': V1__first.sql "
        "(schema now at version 1)" in err
    )
    assert "to undo this run, restore the pre-migrate backup: opskit restore " in err
    assert "applied V1__first.sql" in out
    assert _versions(migrate_db) == ["1"]
    assert query(migrate_db, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%%'") == [(0,)]


def test_a_rehearsal_failure_names_the_migration_and_its_database_error(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config = write_staged_config(tmp_path, migrate_db)
    assert opskit(config, "migrate", "--target", "app").returncode == 0
    scripts_dir({"V2__breaks.sql": "INSERT INTO base VALUES (2);\nSELECT 1/0;\n"})

    result = opskit(config, "migrate", "--target", "app", "--rehearse", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "migration failed: V2__breaks.sql" in result.stderr
    assert "database error: division by zero" in result.stderr
    assert "rehearsal on staging 'stage' failed, production was not touched" in _error_line(result.stderr)
    assert _versions(migrate_db) == ["1"]


def test_an_interrupt_in_a_non_transactional_migration_says_its_completed_statements_stay(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(
        {
            "V1__nt.sql": "CREATE TABLE kept (id int);\nSELECT pg_sleep(60);\n",
            "V1__nt.sql.conf": "executeInTransaction=false\n",
        }
    )
    config = write_config(tmp_path, migrate_db)

    run = start_opskit(config, "migrate")
    _wait_for_sleep(migrate_db)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)

    assert run.returncode == 130, err
    assert "nothing was committed" not in err
    assert "V1__nt.sql ran outside a transaction and was cut off: its completed statements stay" in err
    assert query(migrate_db, "SELECT to_regclass('kept') IS NOT NULL") == [(True,)]


def test_an_interrupt_in_a_non_transactional_migration_after_read_only_statements_says_nothing_was_committed(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__gate.sql": "CREATE TABLE gate (id int);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir(
        {"V2__reads.sql": "SELECT 1;\nSELECT id FROM gate;\n", "V2__reads.sql.conf": "executeInTransaction=false\n"}
    )

    with psycopg.connect(dsn_for(migrate_db)) as gate:
        gate.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")  # V2's SELECT waits here until the interrupt
        run = start_opskit(config, "migrate")
        deadline = time.monotonic() + 30
        while not query(
            migrate_db,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE '%%FROM gate%%'",
        ):
            assert time.monotonic() < deadline, "V2 never waited for the lock on gate"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)

    assert run.returncode == 130, err
    assert "nothing was committed for the run in progress" in err
    assert "cut off" not in err
    assert query(migrate_db, "SELECT version, success FROM flyway_schema_history ORDER BY installed_rank") == [
        ("1", True)
    ]
