"""A job's ``timeout`` cancels a hung run the way a shutdown does, and only that run.

Before, a backup whose pg_dump waited on a lock (another session's ACCESS EXCLUSIVE lock on a
table) blocked its job for ever: no line in the log, the ledger row ``running``, every later
slot skipped, and only the RPO alert, hours later. Now ``timeout = "3s"`` in the job file cancels
the run through its cancel event: pg_dump is stopped, nothing is committed, the ledger says
``timed_out``, one error line says so, and ``opskit_job_runs_total{result="timed_out"}`` counts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from opskit.catalog import list_backups
from opskit.config.model import Config
from opskit.daemon.jobs import parse_job
from opskit.daemon.ledger import ABORTED, Ledger
from opskit.daemon.scheduler import Scheduler
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.daemon.test_process import Daemon, fill, get, metric, start_daemon, wait_for  # noqa: F401 (a fixture)
from tests.daemon.test_scheduler import FakeAction, config, fake, make_runner
from tests.faults.helpers import descendants

__all__ = ["config", "fake"]

pytestmark = pytest.mark.timeout(120)

TIMED_OUT = "timed_out"  # the ledger's result for a run its job's timeout cancelled


@pytest.fixture
def locked_table(pg_database: str) -> Iterator[str]:
    """Fill ``items`` and hold an ACCESS EXCLUSIVE lock on it in an open transaction (a migration stuck mid-way)."""
    fill(pg_database, 100)
    conn = psycopg.connect(pg_database)
    conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
    try:
        yield "items"
    finally:
        conn.rollback()
        conn.close()


def test_a_backup_stuck_on_a_lock_is_cancelled_at_its_job_timeout_committing_nothing_and_counted(
    pg_database: str,
    tmp_path: Path,
    locked_table: str,
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    backups = tmp_path / "backups"
    config_text = (
        f'[storages.local]\nurl = "file://{backups}"\n[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\n'
    )
    # An hourly interval: the current slot is caught up at start, and nothing else runs.
    daemon = start_daemon(
        config_text, {"hourly": 'action = "backup"\ntarget = "app"\ninterval = "1h"\ntimeout = "3s"\n'}
    )
    ledger = Ledger(pg_database)

    def ended() -> list[dict[str, object]]:
        try:
            return [run for run in ledger.runs("hourly") if run["result"] != "running"]
        except psycopg.Error:
            return []  # the daemon creates the table

    runs = wait_for(ended, 40, "the run to end", daemon)
    body = get(daemon.url + "/metrics")[1]
    pg_dumps = [cmd for _, cmd in descendants(daemon.process.pid) if "pg_dump" in cmd]
    alive = daemon.process.poll() is None
    stopped_at = time.monotonic()
    assert daemon.terminate() == 0, daemon.log()[-3000:]

    assert alive and time.monotonic() - stopped_at < 10  # nothing left running to wait for
    assert [run["result"] for run in runs] == [TIMED_OUT]
    error = str(runs[0]["error"])
    assert error.startswith("timed out after 3s (the job's timeout): "), error
    events = daemon.events()
    timed_out = [e for e in events if e["event"] == "job timed out: cancelling the run"]
    assert len(timed_out) == 1 and timed_out[0]["job"] == "hourly" and timed_out[0]["timeout"] == "3s"
    assert timed_out[0]["level"] == "error"
    (summary,) = [e for e in events if e["event"] == "job finished"]
    assert summary["result"] == TIMED_OUT and 3 <= summary["duration_seconds"] < 15
    assert metric(body, "opskit_job_runs_total", job_name="hourly", action="backup", result="timed_out") == 1
    assert metric(body, "opskit_job_last_failure_timestamp_seconds", job_name="hourly") is not None
    # The cancel stopped pg_dump, and nothing half-written is visible: no backup, no temp file.
    assert pg_dumps == []
    assert list_backups(open_storage(StorageConfig(name="local", url=f"file://{backups}")), "app") == []
    assert not list(backups.rglob(".opskit-tmp-*"))
    assert not any(e["event"] == "backup committed" for e in events)


def test_a_timeout_cancels_only_its_own_run_and_a_shutdown_still_aborts_the_others(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    fake.mode = "slow"  # runs until its ctx.cancel is set
    hung = parse_job("hung", {"action": "fake", "interval": "1h", "timeout": "1s"}, config)
    long = parse_job("long", {"action": "fake", "interval": "1h"}, config)
    runner = make_runner(config, pg_database, "a")
    slot = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    threads = [threading.Thread(target=runner.fire, args=(job, slot)) for job in (hung, long)]
    for thread in threads:
        thread.start()
    wait_for(lambda: runner.ledger.result_of("hung", slot) == TIMED_OUT, 15, "the hung run to time out")
    assert runner.running == {"long": slot}  # the other run did not see the timeout's cancel

    scheduler = Scheduler([hung, long], runner, timedelta(seconds=0))
    assert scheduler.stop()
    for thread in threads:
        thread.join(10)
    assert runner.ledger.result_of("long", slot) == ABORTED
    runs = {run["job"]: run for run in runner.ledger.runs()}
    assert str(runs["hung"]["error"]).startswith("timed out after 1s (the job's timeout): ")
    sample = runner.metrics.registry.get_sample_value
    assert sample("opskit_job_runs_total", {"job_name": "hung", "action": "fake", "result": "timed_out"}) == 1
    assert sample("opskit_job_runs_total", {"job_name": "long", "action": "fake", "result": "aborted"}) == 1
