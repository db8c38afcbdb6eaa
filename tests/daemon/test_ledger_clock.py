"""A replica whose clock ran ahead claimed slots early: the real slot still runs, once.

A host booted with its clock a day ahead runs today's hourly job for "tomorrow 10:00"; its
clock is corrected; tomorrow at 10:00 every replica found that slot already in the ledger and
the real 10:00 backup silently never ran. The rows' ``claimed_at`` is the control database's
time, so a row claimed more than the clock-skew allowance before its slot is recognised.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from opskit.config.load import parse_config
from opskit.config.model import Config
from opskit.daemon.jobs import parse_job
from opskit.daemon.ledger import SUCCESS, Ledger
from opskit.daemon.scheduler import Runner
from opskit.ops.metrics import Metrics
from tests.daemon.test_scheduler import FakeAction, fake  # noqa: F401 (fake is a fixture)


@pytest.fixture
def ledger(pg_database: str) -> Iterator[Ledger]:
    ledger = Ledger(pg_database, table="runs", owner="now:1")
    ledger.ensure_table()
    yield ledger


def early_row(dsn: str, job: str, slot: datetime, claimed: timedelta) -> None:
    """Insert the row a replica whose clock ran ``claimed`` ahead left: claimed (and finished) that long before ``slot``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO runs (job, slot, owner, claimed_at, finished_at, result) "
                "VALUES (%s, %s, 'fast:1', %s, %s, 'success')"
            ),
            (job, slot, slot - claimed, slot - claimed + timedelta(minutes=1)),
        )


def due_slot() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_a_slot_claimed_a_day_before_it_was_due_is_claimed_again_once_it_is_due(
    ledger: Ledger, pg_database: str
) -> None:
    slot = due_slot()
    early_row(pg_database, "hourly", slot, timedelta(days=1))
    with capture_logs() as logs:
        claim = ledger.claim("hourly", slot)
    assert claim is not None and claim.attempt == 2
    ledger.finish(claim, SUCCESS)
    warnings = [e for e in logs if e["event"].startswith("slot was claimed before it was due")]
    assert len(warnings) == 1 and warnings[0]["job"] == "hourly"
    # Reclaimed once: its claimed_at is now a due one, so neither replica runs it again.
    assert ledger.claim("hourly", slot) is None
    assert Ledger(pg_database, table="runs", owner="other:2").claim("hourly", slot) is None


def test_a_slot_claimed_early_is_not_run_again_while_it_is_still_in_the_future(
    ledger: Ledger, pg_database: str
) -> None:
    # A second replica whose clock is as fast as the first: the slot is not due yet, it ran once.
    slot = due_slot() + timedelta(days=1)
    early_row(pg_database, "hourly", slot, timedelta(days=1, hours=1))
    assert ledger.claim("hourly", slot) is None


def test_a_slot_claimed_in_time_is_never_claimed_again(ledger: Ledger) -> None:
    slot = due_slot()
    claim = ledger.claim("hourly", slot)
    assert claim is not None
    ledger.finish(claim, SUCCESS)
    assert ledger.claim("hourly", slot) is None
    assert ledger.claim("hourly", slot, retry_unsuccessful=True) is None


def test_the_runner_runs_the_real_slot_after_a_fast_clock_ran_it_early_and_warns_while_ahead(
    tmp_path: Path,
    pg_database: str,
    ledger: Ledger,
    fake: FakeAction,  # noqa: F811 - the fixture imported above
) -> None:
    config: Config = parse_config(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n'
    )
    job = parse_job("hourly", {"action": "fake", "cron": "0 * * * *"}, config)
    real_slot = due_slot() + timedelta(hours=2)
    fast_clock = real_slot + timedelta(minutes=1)  # this host's clock: over an hour ahead
    fast = Runner(config, Ledger(pg_database, table="runs", owner="fast:1"), Metrics(), clock=lambda: fast_clock)
    with capture_logs() as logs:
        outcome = fast.fire(job)
    assert outcome is not None and outcome.slot == real_slot and outcome.result == SUCCESS
    assert any("this host's clock is ahead" in e["event"] for e in logs)

    # Two hours later (real time), with the clock fixed, the slot runs for real. Simulated by moving
    # the early row back two hours, so that its slot is due by the database's clock.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET slot = slot - interval '2 hours', claimed_at = claimed_at - interval '2 hours', "
            "finished_at = finished_at - interval '2 hours' WHERE job = 'hourly'"
        )
    right = Runner(config, ledger, Metrics(), clock=lambda: due_slot() + timedelta(seconds=5))
    outcome = right.fire(job)
    assert outcome is not None and outcome.result == SUCCESS
    assert len(fake.calls) == 2
    assert [row["attempt"] for row in ledger.runs("hourly")] == [2]
