"""Creating databases on the local PostgreSQL: the message when the name was taken in between."""

from __future__ import annotations

import psycopg
import pytest

from opskit.config.model import TargetConfig
from opskit.core.errors import RestoreFailed
from opskit.pg import databases
from tests.databases import dsn_for, run_sql


def test_creating_a_database_another_run_created_meanwhile_names_the_race_and_leaves_it_alone(
    pg_database: str,
) -> None:
    # What the loser of two concurrent restores to one name meets: the name was free when it
    # checked, and another run created it before this run's CREATE DATABASE.
    run_sql(pg_database, "CREATE TABLE theirs AS SELECT 1 AS id")
    server = TargetConfig(name="app", dsn=dsn_for(pg_database))

    with pytest.raises(RestoreFailed) as raised:
        databases.create_database(server, pg_database)

    assert raised.value.exit_code == 4
    assert raised.value.one_line().startswith(
        f"database '{pg_database}' was created by another run at the same time on target 'app'; "
        "this run left it alone; let the other run finish"
    )
    assert "CREATEDB" not in raised.value.one_line()
    with psycopg.connect(dsn_for(pg_database)) as conn:
        assert conn.execute("SELECT id FROM theirs").fetchall() == [(1,)]
