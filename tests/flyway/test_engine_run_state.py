"""The engine's run state the migrate feature relies on: a lock held across planning, what was committed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import LockHeld, MigrationFailed
from tests.migrate.support import engine_for, query


def test_the_lock_held_for_planning_keeps_another_migrate_out_and_the_holder_migrates_under_it(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);"})
    settings = MigrationSettings(locations=(str(root),), lock_retry_count=0)
    with engine_for(migrate_db, settings) as holder, holder.locked():
        assert [a.script for a in holder.plan().applied] == ["V1__a.sql"]
        with engine_for(migrate_db, settings) as other, pytest.raises(LockHeld):
            other.migrate()
        assert holder.migrate().count == 1  # the same session takes its own lock again at once
        with engine_for(migrate_db, settings) as other, pytest.raises(LockHeld):
            other.migrate()  # still held: migrate released only its own hold
    with engine_for(migrate_db, settings) as other:
        assert other.migrate().count == 0


def test_committed_lists_only_what_was_committed_and_a_group_commits_nothing_on_failure(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__a.sql": "CREATE TABLE a (id int);", "V2__bad.sql": "SELECT 1/0;"})
    seen: list[str] = []
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), group=True)) as engine:
        with pytest.raises(MigrationFailed, match=r"all 2 migration\(s\) of the group \(V1__a\.sql, V2__bad\.sql\)"):
            engine.migrate(on_applied=lambda a: seen.append(a.script))
        assert engine.committed == [] and engine.partial is None and seen == []
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        with pytest.raises(MigrationFailed, match=r"V2__bad\.sql"):
            engine.migrate(on_applied=lambda a: seen.append(a.script))
        assert [a.script for a in engine.committed] == ["V1__a.sql"] == seen and engine.partial is None
    assert query(migrate_db, "SELECT version FROM flyway_schema_history") == [("1",)]


def test_a_non_transactional_migration_that_fails_half_way_counts_as_partial(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir({"V1__idx.sql": "CREATE TABLE t (id int);\nCREATE INDEX CONCURRENTLY ti ON missing (id);\n"})
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),), mixed=True)) as engine:
        with pytest.raises(MigrationFailed):
            engine.migrate()
        assert engine.committed == [] and engine.partial == "V1__idx.sql"


def _autocommit(name: str, text: str) -> dict[str, str]:
    """Return migration ``name`` and the ``.conf`` that runs it statement by statement in autocommit."""
    return {name: text, f"{name}.conf": "executeInTransaction=false\n"}


def test_a_non_transactional_migration_that_fails_after_read_only_statements_is_not_partial(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        _autocommit("V1__checks.sql", "SELECT 1;\nSHOW search_path;\nSET lock_timeout = '1s';\nSELECT 1/0;\n")
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        with pytest.raises(MigrationFailed, match="none of its completed statements could change the database"):
            engine.migrate()
        assert engine.committed == [] and engine.partial is None and engine.failed_unchanged == "V1__checks.sql"
    assert query(migrate_db, "SELECT version, success FROM flyway_schema_history") == [("1", False)]


@pytest.mark.parametrize(
    "statement",
    ["SELECT setval('s', 5)", "SELECT * FROM t FOR UPDATE", "SELECT * INTO t2 FROM t", "DO $$ BEGIN END $$"],
    ids=["function-call", "row-locks", "select-into", "do-block"],
)
def test_a_non_transactional_migration_that_fails_after_a_statement_that_may_write_is_partial(
    migrate_db: str, scripts_dir: Callable[..., Path], statement: str
) -> None:
    root = scripts_dir(
        {
            "V1__base.sql": "CREATE SEQUENCE s; CREATE TABLE t (id int);",
            **_autocommit("V2__x.sql", f"{statement};\nSELECT 1/0;\n"),
        }
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        with pytest.raises(MigrationFailed, match="its completed statements stay"):
            engine.migrate()
        assert engine.partial == "V2__x.sql" and engine.failed_unchanged is None


def test_a_failed_create_index_concurrently_that_leaves_an_invalid_index_is_partial(
    migrate_db: str, scripts_dir: Callable[..., Path]
) -> None:
    root = scripts_dir(
        {
            "V1__base.sql": "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (1);",
            "V2__unique.sql": "CREATE UNIQUE INDEX CONCURRENTLY t_id ON t (id);",
        }
    )
    with engine_for(migrate_db, MigrationSettings(locations=(str(root),))) as engine:
        with pytest.raises(MigrationFailed, match="could not create unique index"):
            engine.migrate()
        assert [a.script for a in engine.committed] == ["V1__base.sql"] and engine.partial == "V2__unique.sql"
    assert query(migrate_db, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid") == [("t_id",)]
