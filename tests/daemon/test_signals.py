"""A daemon job sends what the same verb sends from the CLI: its own check's pings, hooks and a run record."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from opskit.catalog.runs import count_runs
from opskit.config.load import parse_config
from opskit.daemon.jobs import parse_job
from opskit.daemon.ledger import FAILED, SUCCESS, Ledger
from opskit.daemon.scheduler import Runner
from opskit.ops.metrics import Metrics
from opskit.storage.registry import open_storage
from tests.daemon.test_scheduler import FakeAction, fake
from tests.ops.test_notify import Receiver, receiver

__all__ = ["fake", "receiver"]


def test_each_job_pings_its_own_check_runs_its_hooks_and_leaves_a_run_record(
    tmp_path: Path, pg_database: str, fake: FakeAction, receiver: Receiver
) -> None:
    log = tmp_path / "hooks.log"
    config = parse_config(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n'
        f'[notify]\nattempts = 1\ntimeout = "2s"\n'
        f'ping_urls = {{ hourly = "{receiver.url}/hourly", nightly = "{receiver.url}/nightly" }}\n'
        f'[[hooks.on_error]]\ncommand = ["sh", "-c", "echo $OPSKIT_JOB $OPSKIT_VERB $OPSKIT_EXIT_CODE >> {log}"]\n'
    )
    ledger = Ledger(pg_database, table="runs", owner="a")
    ledger.ensure_table()
    runner = Runner(config, ledger, Metrics(), config.notify)
    hourly = parse_job("hourly", {"action": "fake", "target": "app", "interval": "1h"}, config)
    nightly = parse_job("nightly", {"action": "fake", "target": "app", "interval": "1d"}, config)
    slot = datetime(2026, 11, 26, 18, tzinfo=UTC)

    ok = runner.fire(hourly, slot=slot)
    fake.mode = "fail"
    failed = runner.fire(nightly, slot=slot)

    assert ok is not None and ok.result == SUCCESS and failed is not None and failed.result == FAILED
    assert receiver.paths() == ["/hourly/start", "/hourly", "/nightly/start", "/nightly/fail"]
    assert "exit code: 4" in receiver.requests[3][1].decode()
    assert log.read_text() == "nightly fake 4\n"
    assert count_runs(open_storage(config.storage("local")), "app", "fake") == {"success": 1, "failure": 1}
