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
