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


def test_a_finished_statement_is_reported_loaded_once_its_rows_are_committed_while_the_next_still_loads(
    pg_database: str,
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); CREATE TABLE u (id int)")
    copy_u = b"COPY public.u (id) FROM stdin;"
    seen: list[tuple[bytes, int, int]] = []

    def loaded(statement: bytes, size: int) -> None:
        seen.append((statement, size, rows_in(pg_database)))  # what another session sees at that moment

    loader = loader_for(pg_database, jobs=2, on_loaded=loaded)
    blocks = [b"".join(b"%d\n" % (block * 100 + i) for i in range(100)) for block in range(6)]
    for block in blocks:
        loader.put(COPY_T, block)
    loader.finished(COPY_T)
    loader.put(copy_u, b"1\n")
    wait_for(lambda: bool(seen), timeout=10)
    loader.finished(copy_u)
    loader.close()

    assert seen[0] == (COPY_T, sum(map(len, blocks)), 600)
    assert [statement for statement, _, _ in seen] == [COPY_T, copy_u]


def test_a_statement_with_no_rows_is_reported_loaded_at_once(pg_database: str) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int)")
    seen: list[tuple[bytes, int]] = []
    loader = loader_for(pg_database, jobs=2, on_loaded=lambda statement, size: seen.append((statement, size)))

    loader.finished(COPY_T)
    loader.close()

    assert seen == [(COPY_T, 0)]
