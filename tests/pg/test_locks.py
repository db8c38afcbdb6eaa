"""Advisory locks against the local PostgreSQL: try, wait with retries, release, session and transaction level."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from opskit.pg import locks
from tests.databases import ADMIN_DSN


@pytest.fixture
def key() -> int:
    """Return a key no other test running on the same server uses."""
    return secrets.randbits(62)


@pytest.fixture
def sessions() -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as one, psycopg.connect(ADMIN_DSN, autocommit=True) as two:
        yield one, two


def test_a_session_lock_excludes_other_sessions_until_released(
    sessions: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], key: int
) -> None:
    one, two = sessions

    assert locks.try_lock(one, key)
    assert not locks.try_lock(two, key)
    locks.release(one, key)
    assert locks.try_lock(two, key)


def test_a_text_key_is_hashed_by_the_server_the_same_way_for_every_session(
    sessions: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], key: int
) -> None:
    one, two = sessions
    text = f"opskit-test:{key}"

    assert locks.try_lock(one, text)
    assert not locks.try_lock(two, text)
    row = one.execute("SELECT hashtextextended(%s, 0)", (text,)).fetchone()
    assert row is not None
    assert not locks.try_lock(two, int(row[0]))  # the same lock, named by its bigint
    locks.release_all(one)
    assert locks.try_lock(two, text)


def test_a_transaction_lock_ends_with_its_transaction(
    sessions: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], key: int
) -> None:
    one, two = sessions

    with one.transaction():
        locks.lock(one, key)
        assert not locks.try_lock(two, key, session=False)
    assert locks.try_lock(two, key)


def test_retries_wait_between_tries_and_give_up_after_the_last(
    sessions: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], key: int
) -> None:
    one, two = sessions
    assert locks.try_lock(one, key)
    slept: list[float] = []
    waits: list[int] = []

    held = locks.lock_with_retries(two, key, 3, sleep=slept.append, on_wait=waits.append)

    assert held is False
    assert waits == [1, 2, 3]
    assert slept == [1.0, 1.0, 1.0]


def test_retries_take_the_lock_once_it_is_free(
    sessions: tuple[psycopg.Connection[Any], psycopg.Connection[Any]], key: int
) -> None:
    one, two = sessions
    assert locks.try_lock(one, key)

    held = locks.lock_with_retries(two, key, 5, sleep=lambda _: locks.release(one, key))

    assert held is True
    assert not locks.try_lock(one, key)


def test_releasing_on_a_closed_connection_is_no_error(key: int) -> None:
    conn = psycopg.connect(ADMIN_DSN, autocommit=True)
    assert locks.try_lock(conn, key)
    conn.close()

    locks.release(conn, key)
    locks.release_all(conn)
