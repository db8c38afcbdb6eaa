"""SQL callbacks through ``opskit migrate`` as a user runs it: the real CLI against a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.databases import run_sql
from tests.migrate.support import opskit, query, write_config


def test_after_migrate_grants_run_and_info_lists_only_migrations(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(
        {
            "V1__orders.sql": "CREATE TABLE orders (id int);\n",
            "afterMigrate__grants.sql": "CREATE ROLE ${reader} NOLOGIN;\nGRANT SELECT ON orders TO ${reader};\n",
        }
    )
    reader = f"{migrate_db}_reader"
    config = write_config(tmp_path, migrate_db, f'[migrations.placeholders]\nreader = "{reader}"\n')
    try:
        applied = opskit(config, "migrate")
        assert applied.returncode == 0, applied.stderr
        assert query(migrate_db, "SELECT has_table_privilege(%s, 'orders', 'SELECT')", (reader,)) == [(True,)]
        info = opskit(config, "migrate", "info", "--json")
        assert info.returncode == 0, info.stderr
        assert [m["filepath"].rsplit("/", 1)[-1] for m in json.loads(info.stdout)["migrations"]] == ["V1__orders.sql"]
        assert query(migrate_db, "SELECT version, script FROM flyway_schema_history") == [("1", "V1__orders.sql")]
    finally:
        run_sql(migrate_db, f'DROP OWNED BY "{reader}"; DROP ROLE IF EXISTS "{reader}"')


def test_a_failing_migration_exits_4_and_after_migrate_error_has_run(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(
        {
            "V1__broken.sql": "CREATE TABLE half (id int);\nSELECT 1 / 0;\n",
            "afterMigrateError.sql": "CREATE TABLE migrate_failed (at timestamptz DEFAULT now());\n",
        }
    )
    config = write_config(tmp_path, migrate_db)
    result = opskit(config, "migrate")
    assert result.returncode == 4, result.stderr
    assert "migration failed: V1__broken.sql" in result.stderr
    assert "database error: division by zero" in result.stderr
    assert query(migrate_db, "SELECT to_regclass('half'), to_regclass('migrate_failed')::text") == [
        (None, "migrate_failed")
    ]
    assert query(migrate_db, "SELECT count(*) FROM flyway_schema_history") == [(0,)]


def test_after_migrate_runs_on_every_deploy_even_when_nothing_is_pending(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    run_sql(migrate_db, "CREATE SCHEMA cb; CREATE TABLE cb.deploys (n serial)")
    scripts_dir(
        {"V1__a.sql": "CREATE TABLE a (id int);\n", "afterMigrate.sql": "INSERT INTO cb.deploys DEFAULT VALUES;\n"}
    )
    config = write_config(tmp_path, migrate_db)
    first = opskit(config, "migrate")
    second = opskit(config, "migrate")
    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert "up to date" in second.stdout
    assert query(migrate_db, "SELECT count(*) FROM cb.deploys") == [(2,)]
    assert query(migrate_db, "SELECT version FROM flyway_schema_history") == [("1",)]
