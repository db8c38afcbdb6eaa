"""CopyLoader against the local PostgreSQL: blocks committed by every worker, failures and aborts."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from opskit.pg.copy_loader import CopyLoader, LoadFailed
from tests.databases import dsn_for, run_sql
from tests.faults.helpers import wait_for

COPY_T = b"COPY public.t (id) FROM stdin;"


def loader_for(database: str, jobs: int = 3, **options: Any) -> CopyLoader:
    return CopyLoader(
        lambda: psycopg.connect(dsn_for(database), autocommit=True),
        jobs,
        [b"SET client_min_messages = warning;"],
        **options,
    )


def rows_in(database: str) -> int:
    with psycopg.connect(dsn_for(database)) as conn:
        row = conn.execute("SELECT count(*) FROM t").fetchone()
    assert row is not None
    return int(row[0])


def copies_open(database: str) -> int:
    with psycopg.connect(dsn_for(database)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'COPY public.t%%' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_close_commits_the_blocks_of_every_worker_and_counts_their_rows(pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int)")
    loader = loader_for(pg_database)
    for block in range(30):
        loader.put(COPY_T, b"".join(b"%d\n" % (block * 100 + i) for i in range(100)))

    stats = loader.close()

    assert stats.rows == {COPY_T: 3000} and stats.blocks == 30
    assert rows_in(pg_database) == 3000


def test_a_bad_row_fails_the_load_and_later_puts_say_so(pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int)")
    loader = loader_for(pg_database, jobs=2)

    with pytest.raises(LoadFailed, match=r'COPY failed for table "public.t \(id\)": ERROR:  invalid input syntax'):
        loader.put(COPY_T, b"1\nnot a number\n")
        for _ in range(50):
            loader.put(COPY_T, b"2\n")
            time.sleep(0.02)
        loader.close()


def test_abort_stops_workers_with_open_copies_at_once_and_commits_nothing(pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int)")
    loader = loader_for(pg_database, jobs=3)
    for _ in range(3):
        loader.put(COPY_T, b"1\n2\n3\n")
    wait_for(lambda: copies_open(pg_database) >= 1, what="a COPY to be open")

    started = time.monotonic()
    loader.abort()

    assert time.monotonic() - started < 5
    assert rows_in(pg_database) == 0
    wait_for(lambda: copies_open(pg_database) == 0, what="the COPYs to end")
