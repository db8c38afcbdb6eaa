"""PostgreSQL advisory locks: try, wait, retry and release, at session or transaction level.

Three users, three kinds of key, one set of functions:

* ``opskit backup`` holds a session lock on an integer derived from the target's name while
  its snapshot session lives, so two backups of one target never overlap;
* the daemon's ledger locks text keys (hashed by the server with ``hashtextextended(key, 0)``,
  so every replica derives the same bigint): a session lock per job for a whole run, a
  transaction lock around each ledger write;
* migrations take Flyway's own integer key, with Flyway's retry-once-a-second behaviour, so
  opskit and Flyway exclude each other.

A session lock lasts until released or until the session ends; a transaction lock until the
transaction ends, and cannot be released earlier. Session and transaction locks on one key
conflict with each other (https://www.postgresql.org/docs/current/explicit-locking.html#ADVISORY-LOCKS).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg

from opskit.core.log import get_logger

log = get_logger(__name__)

# An integer is used as the bigint key itself; a text is hashed by the server into one.
LockKey = int | str


def _key_sql(key: LockKey) -> str:
    """Return the SQL expression of ``key`` with one placeholder for it."""
    return "hashtextextended(%s, 0)" if isinstance(key, str) else "%s"


def try_lock(conn: psycopg.Connection[Any], key: LockKey, *, session: bool = True) -> bool:
    """Take the advisory lock ``key`` if it is free; return True when this session now holds it.

    ``session`` takes ``pg_try_advisory_lock`` (held until :func:`release` or the end of the
    session), otherwise ``pg_try_advisory_xact_lock`` (held until the transaction ends). Raises
    psycopg.Error when the query fails.
    """
    function = "pg_try_advisory_lock" if session else "pg_try_advisory_xact_lock"
    row = conn.execute(f"SELECT {function}({_key_sql(key)})", (key,)).fetchone()
    return bool(row and row[0])


def lock(conn: psycopg.Connection[Any], key: LockKey, *, session: bool = False) -> None:
    """Wait for the advisory lock ``key`` and take it (``pg_advisory_xact_lock``, or with ``session`` the session lock).

    Raises psycopg.Error when the query fails (a lock timeout, a cancelled statement).
    """
    function = "pg_advisory_lock" if session else "pg_advisory_xact_lock"
    conn.execute(f"SELECT {function}({_key_sql(key)})", (key,))


def lock_with_retries(
    conn: psycopg.Connection[Any],
    key: LockKey,
    retries: int,
    *,
    session: bool = True,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[int], None] | None = None,
) -> bool:
    """Try the advisory lock ``key``, then again every ``interval`` seconds, up to ``retries`` more times (-1: forever).

    ``on_wait(attempt)`` is called before each wait (attempt 1 is the first failed try).
    Returns True once the lock is held, False when the retries ran out; the caller raises its
    own LockHeld, which knows who else may hold it. Raises psycopg.Error when a query fails.
    """
    attempt = 0
    while True:
        if try_lock(conn, key, session=session):
            return True
        attempt += 1
        if retries >= 0 and attempt > retries:
            return False
        if on_wait is not None:
            on_wait(attempt)
        sleep(interval)


def release(conn: psycopg.Connection[Any], key: LockKey) -> None:
    """Release the session lock ``key``, committing when the connection is not in autocommit.

    A closed connection, or one that fails now, has released its locks already (or will when
    it closes), so neither raises.
    """
    if conn.closed:
        return
    try:
        conn.execute(f"SELECT pg_advisory_unlock({_key_sql(key)})", (key,))
        if not conn.autocommit:
            conn.commit()
    except psycopg.Error as exc:  # the connection is going away; closing it releases the lock
        log.debug("advisory unlock failed", error=str(exc))


def release_all(conn: psycopg.Connection[Any]) -> None:
    """Release every session lock this session holds (``pg_advisory_unlock_all``); never raises psycopg.Error.

    Call it before closing: closing alone releases the locks too, but only when the server
    backend exits, after the client has moved on, so a run started right after could still
    find a lock held.
    """
    if conn.closed:
        return
    with contextlib.suppress(psycopg.Error):  # the session is gone, and its locks with it
        conn.execute("SELECT pg_advisory_unlock_all()")
