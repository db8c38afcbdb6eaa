"""The run ledger on a real PostgreSQL: each (job, slot) is claimed once, failures are caught up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import psycopg
import pytest

from opskit.core.errors import UnreachableError
from opskit.daemon.ledger import ABORTED, FAILED, SUCCESS, Ledger

SLOT = datetime(2026, 11, 26, 18, 0, tzinfo=UTC)


@pytest.fixture
def ledger(pg_database: str) -> Ledger:
    ledger = Ledger(pg_database, table="ops_runs", owner="replica-a")
    ledger.ensure_table()
    return ledger


def test_a_slot_is_claimed_by_exactly_one_of_many_concurrent_replicas(pg_database: str, ledger: Ledger) -> None:
    replicas = [Ledger(pg_database, table="ops_runs", owner=f"replica-{i}") for i in range(8)]
    barrier = threading.Barrier(len(replicas))
    claims: list[object] = []

    def contend(replica: Ledger) -> None:
        barrier.wait()
        claim = replica.claim("hourly", SLOT)
        claims.append(claim)
        if claim is not None:
            replica.finish(claim, SUCCESS)

    threads = [threading.Thread(target=contend, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(claim is not None for claim in claims) == 1
    runs = ledger.runs("hourly")
    assert len(runs) == 1 and runs[0]["result"] == SUCCESS


def test_a_claimed_slot_is_not_claimed_again_even_after_it_failed(ledger: Ledger, pg_database: str) -> None:
    claim = ledger.claim("hourly", SLOT)
    assert claim is not None
    ledger.finish(claim, FAILED, error="pg_dump exited 1")
    other = Ledger(pg_database, table="ops_runs", owner="replica-b")
    assert other.claim("hourly", SLOT) is None
    assert ledger.result_of("hourly", SLOT) == FAILED


def test_catch_up_reclaims_an_unsuccessful_slot_but_never_a_successful_one(ledger: Ledger, pg_database: str) -> None:
    other = Ledger(pg_database, table="ops_runs", owner="replica-b")
    claim = ledger.claim("hourly", SLOT)
    assert claim is not None
    ledger.finish(claim, ABORTED, error="shutdown")
    retry = other.claim("hourly", SLOT, retry_unsuccessful=True)
    assert retry is not None and retry.attempt == 2
    other.finish(retry, SUCCESS, details={"backup_id": "20261126T180000Z-abcd"})
    assert ledger.claim("hourly", SLOT, retry_unsuccessful=True) is None
    run = ledger.runs("hourly")[0]
    assert (run["owner"], run["attempt"], run["result"]) == ("replica-b", 2, SUCCESS)
    assert run["details"] == {"backup_id": "20261126T180000Z-abcd"}


def test_a_running_job_holds_its_lock_so_no_replica_starts_it_meanwhile(ledger: Ledger, pg_database: str) -> None:
    other = Ledger(pg_database, table="ops_runs", owner="replica-b")
    claim = ledger.claim("hourly", SLOT)
    assert claim is not None
    later = datetime(2026, 11, 26, 19, 0, tzinfo=UTC)
    assert other.claim("hourly", later) is None  # still running the 18:00 slot
    assert other.claim("nightly", later) is not None  # other jobs are unaffected
    ledger.finish(claim, SUCCESS)
    assert other.claim("hourly", later) is not None


def test_a_dead_replicas_running_slot_is_caught_up(ledger: Ledger, pg_database: str) -> None:
    claim = ledger.claim("hourly", SLOT)
    assert claim is not None
    claim.conn.close()  # the replica died mid-run: its session and lock are gone, the row says running
    other = Ledger(pg_database, table="ops_runs", owner="replica-b")
    assert other.claim("hourly", SLOT) is None
    retry = other.claim("hourly", SLOT, retry_unsuccessful=True)
    assert retry is not None
    other.finish(retry, SUCCESS)


def test_the_table_name_is_quoted_as_an_identifier(pg_database: str) -> None:
    ledger = Ledger(pg_database, table="public.Mixed_Case_Runs", owner="a")
    ledger.ensure_table()
    ledger.ensure_table()  # idempotent
    with psycopg.connect(pg_database) as conn:
        row = conn.execute("SELECT to_regclass('public.\"Mixed_Case_Runs\"')::text").fetchone()
        assert row == ('"Mixed_Case_Runs"',)


def test_an_unreachable_control_database_is_a_clear_error() -> None:
    ledger = Ledger("host=127.0.0.1 port=1 user=postgres password=hunter2 dbname=x", connect_timeout=2)
    with pytest.raises(UnreachableError, match="control database") as caught:
        ledger.claim("hourly", SLOT)
    assert "hunter2" not in caught.value.message
