"""A slot that fires while its job still runs an earlier one is skipped out loud, and counted.

Before, a 10-second backup on a 3-second interval lost three slots with nothing above debug in
the log: the job's ledger lock was taken, so the slot was "not ours". Now each skipped slot is a
warning naming the job, the slot and the run in the way (its slot and owner, on this replica or
another), and ``opskit_job_skipped_total{job_name}`` counts it. A replica that finds another one
running the very same slot (or a newer one) has skipped nothing: that stays quiet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from opskit.config.model import Config
from opskit.daemon.jobs import parse_job
from opskit.daemon.ledger import SUCCESS, Ledger
from tests.daemon.test_process import Daemon, fill, get, metric, start_daemon, wait_for  # noqa: F401 (a fixture)
from tests.daemon.test_scheduler import FakeAction, config, fake, make_runner
from tests.faults.helpers import slow_tools_dir

__all__ = ["config", "fake"]

pytestmark = pytest.mark.timeout(120)

SKIPPED = "slot skipped: the job is still running an earlier slot"


def test_each_slot_a_long_backup_keeps_from_running_is_a_warning_naming_the_run_and_a_counted_metric(
    pg_database: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    fill(pg_database, 1000)  # about 90 kB of dump: 7-8 s through the throttled pg_dump
    slow = slow_tools_dir(tmp_path, bytes_per_second=12 * 1024)
    config_text = (
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\npg_bin_dir = "{slow}"\n'
        '[daemon]\nshutdown_grace = "30s"\n'
    )
    daemon = start_daemon(config_text, {"often": 'action = "backup"\ntarget = "app"\ninterval = "2s"\n'})
    first = wait_for(
        lambda: next((e for e in daemon.events() if e["event"] == "job finished"), None), 60, "the first run", daemon
    )
    assert first["result"] == SUCCESS and first["duration_seconds"] > 4, first
    body = get(daemon.url + "/metrics")[1]
    assert daemon.terminate() == 0, daemon.log()[-3000:]

    skipped = [e for e in daemon.events() if e["event"] == SKIPPED]
    # Every 2-second slot that came due while the first run ran (its slot excluded) is named once.
    assert len(skipped) >= 2, daemon.log()[-3000:]
    first_slot = datetime.fromisoformat(first["slot"])
    during_first = [e for e in skipped if datetime.fromisoformat(e["slot"]) <= first_slot + timedelta(seconds=4)]
    assert during_first, skipped
    for event in during_first:
        assert event["level"] == "warning" and event["job"] == "often"
        assert event["running_slot"] == first["slot"] and event["slot"] != first["slot"]
        assert event["running_owner"].endswith(f":{daemon.process.pid}")
    assert len({e["slot"] for e in skipped}) == len(skipped)  # one line per slot
    counted = metric(body, "opskit_job_skipped_total", job_name="often")
    assert counted is not None and counted >= len(during_first)
    # The slots skipped have no ledger row: they were never run, by anyone.
    slots = {run["slot"] for run in Ledger(pg_database).runs("often")}
    assert not {datetime.fromisoformat(e["slot"]) for e in skipped} & slots


def test_a_replica_names_the_other_replicas_run_that_keeps_a_slot_from_running_and_is_quiet_about_a_shared_slot(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    fake.mode = "slow"  # runs until cancelled
    job = parse_job("j", {"action": "fake", "target": "app", "interval": "1h"}, config)
    replica_a, replica_b = make_runner(config, pg_database, "a"), make_runner(config, pg_database, "b")
    slot = datetime(2026, 11, 26, 18, tzinfo=UTC)
    running = threading.Thread(target=replica_a.fire, args=(job, slot))
    running.start()
    try:
        assert fake.started.wait(10)
        wait_for(lambda: replica_a.running, 10, "replica a to run the job")
        with capture_logs() as logs:
            same = replica_b.fire(job, slot=slot)  # a replica that fired the same slot: not a skip
            older = replica_b.fire(job, slot=slot - timedelta(hours=1))  # a late catch-up: superseded
            later = replica_b.fire(job, slot=slot + timedelta(hours=1))
    finally:
        replica_a.cancel.set()
        running.join(20)
    assert same is None and older is None and later is None
    warnings = [entry for entry in logs if entry["event"] == SKIPPED]
    assert len(warnings) == 1, logs
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["slot"] == (slot + timedelta(hours=1)).isoformat()
    assert warnings[0]["running_slot"] == slot.isoformat() and warnings[0]["running_owner"] == "a"
    assert replica_b.metrics.registry.get_sample_value("opskit_job_skipped_total", {"job_name": "j"}) == 1
    assert [run["slot"] for run in replica_a.ledger.runs("j")] == [slot]
