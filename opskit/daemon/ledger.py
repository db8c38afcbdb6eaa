"""The run ledger: which replica ran which (job, scheduled slot), and how it ended.

Several daemons may share one control database. Before running a slot a replica:

1. opens a direct connection (not through a transaction-pooling proxy: session advisory
   locks need a real session) and takes ``pg_try_advisory_lock`` on the job. Holding it
   for the whole run means one replica at a time runs a job, and a replica that dies
   loses it with its connection, which is how a stale ``running`` row is recognised;
2. in one transaction, under ``pg_advisory_xact_lock`` on the ledger, inserts the
   (job, slot) row with ``ON CONFLICT DO NOTHING``. Only the replica whose insert
   returned a row runs the slot. At start-up (catch-up) a slot whose row did not end in
   ``success`` may be claimed again: nobody else can be running it while we hold the
   job lock.
3. a slot whose row was claimed before the slot was due (by the control database's clock, more
   than :data:`~opskit.plan.timeline.CLOCK_SKEW` early) was claimed by a replica whose clock ran
   ahead: that run covered no real slot. Once the slot is really due it is claimed again (once),
   so a wrong clock that was corrected never silently skips the real run. A claim of a slot that
   lies ahead of the database's clock is logged as a warning naming the difference.

4. a replica that finds the job's lock held reads the job's newest ``running`` row: when it
   is an earlier slot, the slot it fired for is skipped (the job is still busy), and the runner
   says so with that run's slot and owner (:class:`Busy`).

Result values: ``running``, ``success``, ``failed``, ``aborted`` (a shutdown cancelled it),
``timed_out`` (the job's ``timeout`` cancelled it).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from opskit.core.errors import UnreachableError
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text
from opskit.core.units import format_duration
from opskit.pg import locks
from opskit.plan.timeline import CLOCK_SKEW
from opskit.secrets.references import Secret

log = get_logger(__name__)

RUNNING, SUCCESS, FAILED, ABORTED, TIMED_OUT = "running", "success", "failed", "aborted", "timed_out"
RESULTS = (RUNNING, SUCCESS, FAILED, ABORTED, TIMED_OUT)
# Results that mean the job did not do its work (an abort at shutdown is neither success nor failure).
FAILURES = (FAILED, TIMED_OUT)


def default_owner() -> str:
    """Return this replica's name in the ledger: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Claim:
    """A claimed slot. Holds the connection whose session owns the job's advisory lock."""

    job: str
    slot: datetime
    attempt: int
    conn: psycopg.Connection[Any]


@dataclass(frozen=True)
class Busy:
    """The job's lock is held by another run: the newest ``running`` row of the job, when one was found.

    ``slot`` is None when no such row was read (the holder finished in between, or the read failed).
    """

    job: str
    slot: datetime | None = None
    owner: str | None = None
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class JobResults:
    """When a job's newest successful and newest failed (or timed-out) runs finished, by the database's clock."""

    last_success: datetime | None = None
    last_failure: datetime | None = None


class Ledger:
    """The ledger table in the control database."""

    def __init__(
        self,
        dsn: str,
        table: str = "opskit_job_runs",
        password: Secret | None = None,
        owner: str | None = None,
        connect_timeout: int = 10,
    ) -> None:
        self.dsn = dsn
        self.password = password
        self.owner = owner or default_owner()
        self.connect_timeout = connect_timeout
        self.table_name = table
        self.table = sql.Identifier(*table.split("."))
        self.index = sql.Identifier(table.split(".")[-1] + "_job_finished_idx")

    # ------------------------------------------------------------------ connections

    def connect(self) -> psycopg.Connection[Any]:
        """Return a new autocommit connection to the control database.

        Raises UnreachableError (with the DSN's password redacted) when it cannot connect.
        """
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
            "application_name": "opskit-daemon",
        }
        if self.password is not None:
            kwargs["password"] = self.password.reveal()
        try:
            return psycopg.connect(self.dsn, **kwargs)
        except psycopg.Error as exc:
            raise UnreachableError(
                f"control database for the job ledger is unreachable: {redact_text(str(exc).strip())}",
                hint="check daemon.control_dsn (default: the target's dsn) and that the server is up",
            ) from exc

    def _lock_key(self, *parts: str) -> str:
        """Return the text key of the ledger's lock, or of a job's with ``parts`` (the server hashes it)."""
        return ":".join(("opskit-ledger", self.table_name, *parts))

    def ensure_table(self) -> None:
        """Create the ledger table if it does not exist (concurrent replicas serialize on a lock)."""
        with self.connect() as conn, conn.transaction():
            locks.lock(conn, self._lock_key(), session=False)
            conn.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {table} (
                        job         text        NOT NULL,
                        slot        timestamptz NOT NULL,
                        owner       text        NOT NULL,
                        attempt     integer     NOT NULL DEFAULT 1,
                        claimed_at  timestamptz NOT NULL DEFAULT now(),
                        finished_at timestamptz,
                        result      text        NOT NULL DEFAULT 'running',
                        error       text,
                        details     jsonb,
                        PRIMARY KEY (job, slot)
                    )
                    """
                ).format(table=self.table)
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {table} (job, finished_at)").format(
                    index=self.index, table=self.table
                )
            )

    def check(self) -> None:
        """Connect and read the ledger table. Raises UnreachableError (readiness probe)."""
        with self.connect() as conn:
            try:
                conn.execute(sql.SQL("SELECT 1 FROM {table} LIMIT 1").format(table=self.table))
            except psycopg.Error as exc:
                raise UnreachableError(f"job ledger cannot be read: {str(exc).strip()}") from exc

    # ------------------------------------------------------------------ claims

    def claim(self, job: str, slot: datetime, retry_unsuccessful: bool = False) -> Claim | None:
        """Claim (job, slot) for this replica; return the Claim, or None when it is not ours to run.

        None means another run holds the job (see :meth:`try_claim`) or the slot was already
        claimed. Raises UnreachableError.
        """
        claim = self.try_claim(job, slot, retry_unsuccessful)
        return claim if isinstance(claim, Claim) else None

    def try_claim(self, job: str, slot: datetime, retry_unsuccessful: bool = False) -> Claim | Busy | None:
        """Claim (job, slot) for this replica; return the Claim, Busy, or None when the slot was claimed already.

        Busy means another run holds the job's lock (on this replica or another) and names it.
        With ``retry_unsuccessful`` (start-up catch-up) a slot that ended in anything but
        success, or whose claimer died, is claimed again. Raises UnreachableError.
        """
        conn = self.connect()
        try:
            if not locks.try_lock(conn, self._lock_key(job), session=True):
                busy = self._busy(conn, job)
                conn.close()
                return busy
            attempt = self._insert_or_reclaim(conn, job, slot, retry_unsuccessful)
        except psycopg.Error as exc:
            conn.close()
            raise UnreachableError(f"cannot claim job '{job}' in the ledger: {str(exc).strip()}") from exc
        except BaseException:
            conn.close()
            raise
        if attempt is None:
            _release(conn)
            return None
        return Claim(job=job, slot=slot, attempt=attempt, conn=conn)

    def _busy(self, conn: psycopg.Connection[Any], job: str) -> Busy:
        """Return the job's newest ``running`` row as Busy (holder unknown when there is none)."""
        row = conn.execute(
            sql.SQL(
                "SELECT slot, owner, claimed_at FROM {table} WHERE job = %s AND result = 'running' "
                "ORDER BY claimed_at DESC LIMIT 1"
            ).format(table=self.table),
            (job,),
        ).fetchone()
        if row is None:
            return Busy(job)
        return Busy(job, slot=row[0], owner=str(row[1]), claimed_at=row[2])

    def _insert_or_reclaim(
        self, conn: psycopg.Connection[Any], job: str, slot: datetime, retry_unsuccessful: bool
    ) -> int | None:
        with conn.transaction():
            locks.lock(conn, self._lock_key(), session=False)
            row = conn.execute(
                sql.SQL(
                    "INSERT INTO {table} (job, slot, owner) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING RETURNING attempt, claimed_at"
                ).format(table=self.table),
                (job, slot, self.owner),
            ).fetchone()
            if row is not None:
                if slot - row[1] > CLOCK_SKEW:
                    log.warning(
                        "slot claimed before it is due by the control database's clock: this host's clock is ahead",
                        job=job,
                        slot=slot.isoformat(),
                        database_time=row[1].isoformat(),
                        ahead=format_duration(slot - row[1]),
                    )
                return int(row[0])
            existing = conn.execute(
                sql.SQL("SELECT claimed_at, result, now() FROM {table} WHERE job = %s AND slot = %s FOR UPDATE").format(
                    table=self.table
                ),
                (job, slot),
            ).fetchone()
            if existing is None:
                return None
            claimed_at, result, db_now = existing
            early = claimed_early(slot, claimed_at, db_now)
            if early:
                log.warning(
                    "slot was claimed before it was due (a clock that ran ahead): running it now",
                    job=job,
                    slot=slot.isoformat(),
                    claimed_at=claimed_at.isoformat(),
                    result=result,
                )
            elif not retry_unsuccessful or result == SUCCESS:
                return None
            # We hold the job's session lock, so a 'running' row is a dead replica's (or an early one's).
            row = conn.execute(
                sql.SQL(
                    "UPDATE {table} SET owner = %s, attempt = attempt + 1, claimed_at = now(), "
                    "finished_at = NULL, result = 'running', error = NULL, details = NULL "
                    "WHERE job = %s AND slot = %s RETURNING attempt"
                ).format(table=self.table),
                (self.owner, job, slot),
            ).fetchone()
            return int(row[0]) if row is not None else None

    def finish(
        self, claim: Claim, result: str, error: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record how a claimed run ended and release the job lock.

        A ledger write failure is logged, not raised: the run itself already happened.
        """
        if result not in RESULTS:
            raise ValueError(f"unknown result {result!r}")
        try:
            claim.conn.execute(
                sql.SQL(
                    "UPDATE {table} SET finished_at = now(), result = %s, error = %s, details = %s "
                    "WHERE job = %s AND slot = %s AND owner = %s"
                ).format(table=self.table),
                (
                    result,
                    error,
                    json.dumps(dict(details), default=str) if details else None,
                    claim.job,
                    claim.slot,
                    self.owner,
                ),
            )
        except psycopg.Error as exc:
            log.warning("ledger not updated", job=claim.job, slot=claim.slot.isoformat(), error=str(exc).strip())
        finally:
            _release(claim.conn)

    # ------------------------------------------------------------------ reading

    def result_of(self, job: str, slot: datetime) -> str | None:
        """Return the recorded result of (job, slot), or None when it was never claimed."""
        with self.connect() as conn:
            row = conn.execute(
                sql.SQL("SELECT result FROM {table} WHERE job = %s AND slot = %s").format(table=self.table),
                (job, slot),
            ).fetchone()
        return str(row[0]) if row else None

    def job_results(self) -> dict[str, JobResults]:
        """Return {job: when its newest success and newest failure finished}, for every job in the ledger.

        The metrics of a freshly started daemon come from here, so a job that failed last night
        still shows as failing after a restart. Raises UnreachableError.
        """
        query = sql.SQL(
            "SELECT job, max(finished_at) FILTER (WHERE result = %s), "
            "max(finished_at) FILTER (WHERE result = ANY(%s)) FROM {table} GROUP BY job"
        ).format(table=self.table)
        try:
            with self.connect() as conn:
                rows = conn.execute(query, (SUCCESS, list(FAILURES))).fetchall()
        except psycopg.Error as exc:
            raise UnreachableError(f"job ledger cannot be read: {str(exc).strip()}") from exc
        return {str(job): JobResults(success, failure) for job, success, failure in rows}

    def runs(self, job: str | None = None) -> list[dict[str, Any]]:
        """Return the recorded runs (of one job, or all), oldest slot first."""
        query = sql.SQL(
            "SELECT job, slot, owner, attempt, claimed_at, finished_at, result, error, details FROM {table} "
        ).format(table=self.table)
        params: tuple[Any, ...] = ()
        if job is not None:
            query += sql.SQL("WHERE job = %s ")
            params = (job,)
        query += sql.SQL("ORDER BY slot, job")
        with self.connect() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            return list(cursor.execute(query, params).fetchall())


def claimed_early(slot: datetime, claimed_at: datetime, db_now: datetime) -> bool:
    """Return True when a row of ``slot`` was claimed before the slot was due and the slot is due now.

    Both times are the control database's (``claimed_at`` is its ``now()`` at the claim): a row
    claimed more than CLOCK_SKEW before its slot came from a replica whose clock ran ahead. It is
    reclaimable only once the slot is really due, so replicas whose clocks are still ahead do not
    run it again and again; the reclaim stamps a due ``claimed_at``, so it happens once.
    """
    return slot - claimed_at > CLOCK_SKEW and db_now >= slot - CLOCK_SKEW


def _release(conn: psycopg.Connection[Any]) -> None:
    """Release the job lock, then close.

    Closing alone releases it too, but asynchronously: the server backend exits after the client
    has moved on, and another replica's immediate try could still find the lock held.
    """
    try:
        locks.release_all(conn)
    finally:
        conn.close()
