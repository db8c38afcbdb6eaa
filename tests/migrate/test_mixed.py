"""A later script mixing transactional and non-transactional statements with ``mixed = false``.

Flyway applies the migrations before it and fails at it (their rows stay); opskit refuses the
whole run up front and says so, in ``migrate --dry-run`` too (docs/migrations.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.migrate.support import opskit, query, write_config

SCRIPTS = {
    "V1__a.sql": "CREATE TABLE a (id int);\n",
    "V2__b.sql": "CREATE TABLE b (id int);\n",
    "V3__mixed.sql": "CREATE TABLE c (id int);\nCREATE INDEX CONCURRENTLY c_id ON c (id);\n",
}


def test_dry_run_shows_the_plan_marks_the_mixed_script_refused_and_exits_2(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(SCRIPTS)
    config = write_config(tmp_path, migrate_db)

    result = opskit(config, "migrate", "--dry-run")

    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines() == [
        "migrate would refuse this run: 3 migration(s) pending on target 'app' (schema version now:"
        " << Empty Schema >>), none would be applied:",
        "  V1__a.sql  [version 1: a]",
        "  V2__b.sql  [version 2: b]",
        "  V3__mixed.sql  [version 3: mixed]  REFUSED: mixes transactional and non-transactional statements"
        " (mixed = false)",
    ]
    assert "Offending migration: V3__mixed.sql; nothing was applied (Flyway would apply the 2 migration(s)" in (
        result.stderr
    )
    assert query(migrate_db, "SELECT to_regclass('flyway_schema_history'), to_regclass('a')") == [(None, None)]


def test_migrate_refuses_before_applying_anything_where_flyway_would_apply_v1_and_v2(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir(SCRIPTS)
    config = write_config(tmp_path, migrate_db)

    result = opskit(config, "migrate", "--backup-first")

    assert result.returncode == 2, result.stderr
    assert "even though mixed is false" in result.stderr
    assert "applied" not in result.stdout
    # no history row, no table, and no backup taken for a run that cannot start
    assert query(migrate_db, "SELECT to_regclass('flyway_schema_history'), to_regclass('a')") == [(None, None)]
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("manifest.json"))


def test_with_mixed_true_the_whole_plan_runs(migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path) -> None:
    scripts_dir(SCRIPTS)
    config = write_config(tmp_path, migrate_db, "mixed = true\n")

    result = opskit(config, "migrate")

    assert result.returncode == 0, result.stderr
    assert query(migrate_db, "SELECT installed_rank, version, success FROM flyway_schema_history") == [
        (1, "1", True),
        (2, "2", True),
        (3, "3", True),
    ]
