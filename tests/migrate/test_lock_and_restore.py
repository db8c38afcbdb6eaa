"""``--backup-first --restore-on-failure`` never reverts work its run did not do.

The migration lock is held from before planning and the backup to the end (so a concurrent
migrator's commits are never inside the "undo"), and a run that committed nothing restores
nothing (so other sessions' writes made meanwhile survive).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.databases import dsn_for
from tests.migrate.support import opskit, query, start_opskit, write_config

LOCK_OBJID = 77433833903597 & 0xFFFFFFFF  # the low half of Flyway's default lock key, as pg_locks shows it


def _versions(dbname: str) -> list[str | None]:
    return [r[0] for r in query(dbname, "SELECT version FROM flyway_schema_history ORDER BY installed_rank")]


def _oid(dbname: str) -> int:
    return int(query("postgres", "SELECT oid FROM pg_database WHERE datname = %s", (dbname,))[0][0])


def _wait_for_sleeping_migration(dbname: str) -> None:
    """Wait until a session of ``dbname`` holds the migration lock and runs a pg_sleep."""
    deadline = time.monotonic() + 30
    while not query(
        dbname,
        "SELECT 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
        " WHERE a.datname = current_database() AND a.state = 'active' AND a.query LIKE '%%pg_sleep%%'"
        " AND l.locktype = 'advisory' AND l.objid = %s",
        (LOCK_OBJID,),
    ):
        assert time.monotonic() < deadline, "the migration never started its pg_sleep under the lock"
        time.sleep(0.05)


def _storage_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "backups"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_concurrent_runs_committed_migration_survives_another_runs_restore_on_failure(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # Run A applies a slow V2. Run B (another checkout: V3 good, V4 failing) starts while A is in
    # V2, waits for the lock, and only then plans and backs up: its backup holds A's V2, so
    # restoring it after V4 fails undoes B's V3 and nothing of A's.
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config_a = write_config(tmp_path, migrate_db)
    assert opskit(config_a, "migrate").returncode == 0
    scripts_dir({"V2__slow.sql": "SELECT pg_sleep(5);\nCREATE TABLE a2 (i int);\n"})
    other = tmp_path / "sql2"
    other.mkdir()
    for name, text in {
        "V1__base.sql": "CREATE TABLE base (id int);",
        "V2__slow.sql": "SELECT pg_sleep(5);\nCREATE TABLE a2 (i int);\n",
        "V3__good.sql": "CREATE TABLE b3 (i int);",
        "V4__bad.sql": "SELECT 1/0;",
    }.items():
        (other / name).write_text(text, encoding="utf-8")
    config_b = tmp_path / "b.toml"
    config_b.write_text(
        config_a.read_text(encoding="utf-8").replace(f'filesystem:{tmp_path / "sql"}"', f'filesystem:{other}"'),
        encoding="utf-8",
    )

    run_a = start_opskit(config_a, "migrate")
    _wait_for_sleeping_migration(migrate_db)
    run_b = start_opskit(config_b, "migrate", "--backup-first", "--restore-on-failure", "--yes")
    out_a, err_a = run_a.communicate(timeout=120)
    _, err_b = run_b.communicate(timeout=300)

    assert run_a.returncode == 0, err_a
    assert "applied V2__slow.sql" in out_a
    assert run_b.returncode == 4, err_b
    assert "waiting for the migration lock" in err_b
    assert "was restored into 'app'" in err_b
    assert _versions(migrate_db) == ["1", "2"]
    assert query(migrate_db, "SELECT to_regclass('a2') IS NOT NULL, to_regclass('b3') IS NULL") == [(True, True)]


@pytest.mark.parametrize(
    "failing",
    [
        {"V2__bad.sql": "SELECT pg_sleep(2);\nSELECT 1/0;\n"},
        {"beforeMigrate.sql": "SELECT pg_sleep(2);\nSELECT 1/0;\n", "V2__fine.sql": "SELECT 1;"},
    ],
    ids=["its-only-migration-fails", "before-migrate-callback-fails"],
)
def test_restore_on_failure_restores_nothing_when_the_run_committed_nothing_so_concurrent_writes_survive(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path, failing: dict[str, str]
) -> None:
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir(failing)
    oid = _oid(migrate_db)

    run = start_opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes")
    _wait_for_sleeping_migration(migrate_db)
    with psycopg.connect(dsn_for(migrate_db), autocommit=True) as writer:
        writer.execute("INSERT INTO base VALUES (42)")
    _, err = run.communicate(timeout=300)

    assert run.returncode == 4, err
    assert "nothing of this run was committed" in err and "no restore was needed" in err
    assert "to undo this run" not in err and "was restored into" not in err
    assert query(migrate_db, "SELECT id FROM base") == [(42,)]
    assert _oid(migrate_db) == oid  # the database was never swapped for a restored copy
    assert _versions(migrate_db) == ["1"]
    assert len([p for p in _storage_files(tmp_path) if p.name == "manifest.json"]) == 1  # the backup stays


def test_a_failure_after_a_committed_migration_names_it_and_offers_the_restore(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir({"V2__adds.sql": "CREATE TABLE added (id int);", "V3__bad.sql": "SELECT 1/0;"})

    result = opskit(config, "migrate", "--backup-first", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "this run had committed V2__adds.sql before the failure" in result.stderr
    assert "to undo this run, restore the pre-migrate backup: opskit restore " in result.stderr
    assert _versions(migrate_db) == ["1", "2"]


def _non_transactional(scripts_dir: Callable[..., Path], name: str, text: str) -> None:
    """Write migration ``name`` with a ``.conf`` that runs it statement by statement in autocommit."""
    scripts_dir({name: text, f"{name}.conf": "executeInTransaction=false\n"})


def _wait_for_lock_wait(dbname: str, marker: str) -> None:
    """Wait until a session of ``dbname`` whose query holds ``marker`` waits for a lock."""
    deadline = time.monotonic() + 60
    while not query(
        dbname,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE %s",
        (f"%{marker}%",),
    ):
        assert time.monotonic() < deadline, f"no session ever waited for a lock in {marker}"
        time.sleep(0.05)


def test_restore_on_failure_restores_nothing_when_a_non_transactional_migration_failed_after_read_only_statements(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # V2 runs SELECT 1 and SET, then an ALTER that waits for the test's lock on "gate" and fails
    # on its row: nothing of V2 changed the database, so the row written meanwhile must survive.
    scripts_dir(
        {"V1__base.sql": "CREATE TABLE base (id int); CREATE TABLE gate (id int); INSERT INTO gate VALUES (1);"}
    )
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    _non_transactional(
        scripts_dir,
        "V2__checks.sql",
        "SELECT 1;\nSET lock_timeout = '60s';\nALTER TABLE gate ADD CONSTRAINT gate_big CHECK (id > 5);\n",
    )
    oid = _oid(migrate_db)

    with psycopg.connect(dsn_for(migrate_db)) as gate:
        gate.execute("SELECT * FROM gate")  # ACCESS SHARE until the commit: pg_dump passes, the ALTER waits
        run = start_opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes")
        _wait_for_lock_wait(migrate_db, "gate_big")
        with psycopg.connect(dsn_for(migrate_db), autocommit=True) as writer:
            writer.execute("INSERT INTO base VALUES (42)")  # after the backup, before the failure
    _, err = run.communicate(timeout=300)

    assert run.returncode == 4, err
    assert "none of its completed statements could change the database" in err
    assert "nothing of this run was committed" in err and "no restore was needed" in err
    assert "to undo this run" not in err and "was restored into" not in err
    assert query(migrate_db, "SELECT id FROM base") == [(42,)]
    assert _oid(migrate_db) == oid  # the database was never swapped for a restored copy
    assert query(migrate_db, "SELECT version, success FROM flyway_schema_history ORDER BY installed_rank") == [
        ("1", True),
        ("2", False),  # Flyway's failed row stays: repair removes it
    ]


def test_restore_on_failure_restores_when_a_non_transactional_migration_failed_after_a_write(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    _non_transactional(scripts_dir, "V2__half.sql", "SELECT 1;\nINSERT INTO base VALUES (7);\nSELECT 1/0;\n")

    result = opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "this run had committed V2__half.sql before the failure" in result.stderr
    assert "was restored into 'app'" in result.stderr
    assert query(migrate_db, "SELECT id FROM base") == []
    assert _versions(migrate_db) == ["1"]


def test_restore_on_failure_restores_when_a_failed_create_index_concurrently_left_an_invalid_index(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    # The duplicate makes the unique build fail after the index was created: it stays, INVALID.
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int); INSERT INTO base VALUES (1), (1);"})
    config = write_config(tmp_path, migrate_db)
    assert opskit(config, "migrate").returncode == 0
    scripts_dir({"V2__unique.sql": "CREATE UNIQUE INDEX CONCURRENTLY base_id ON base (id);\n"})

    result = opskit(config, "migrate", "--backup-first", "--restore-on-failure", "--yes", timeout=300)

    assert result.returncode == 4, result.stderr
    assert "could not create unique index" in result.stderr
    assert "this run had committed V2__unique.sql before the failure" in result.stderr
    assert "was restored into 'app'" in result.stderr
    assert query(migrate_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert query(migrate_db, "SELECT id FROM base") == [(1,), (1,)]
    assert _versions(migrate_db) == ["1"]
