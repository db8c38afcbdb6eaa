"""Scheduler and runner semantics with a tiny fake action, against the real ledger database."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs

from opskit.config.load import parse_config
from opskit.config.model import Config
from opskit.config.notify import NotifySettings
from opskit.context import AppContext
from opskit.core.errors import BackupFailed
from opskit.daemon.jobs import parse_job, register_action, unregister_action
from opskit.daemon.ledger import ABORTED, FAILED, SUCCESS, Ledger
from opskit.daemon.scheduler import Runner, Scheduler
from opskit.ops.metrics import Metrics

if TYPE_CHECKING:
    from opskit.daemon.service import Daemon


class FakeAction:
    """Records its calls; ``mode`` picks success, failure, or running until cancelled."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.mode = "ok"
        self.started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, ctx: AppContext, target: str | None = None, **args: Any) -> Any:
        with self.lock:
            self.calls.append({"target": target, **args})
        self.started.set()
        if self.mode == "fail":
            raise BackupFailed("pg_dump exited 1")
        if self.mode == "slow":
            while not ctx.cancel.wait(0.05):  # like the backup: check between chunks
                pass
            raise BackupFailed("the run was cancelled (shutdown requested); nothing was committed")
        if self.mode == "boom":
            raise RuntimeError("a bug")
        return None


@pytest.fixture
def fake() -> Iterator[FakeAction]:
    action = FakeAction()
    register_action("fake", action)
    yield action
    unregister_action("fake")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n')


def make_runner(config: Config, dsn: str, owner: str, notify: NotifySettings | None = None) -> Runner:
    ledger = Ledger(dsn, table="runs", owner=owner)
    ledger.ensure_table()
    return Runner(config, ledger, Metrics(), notify)


def test_a_claimed_run_calls_the_action_with_its_args_and_records_success(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    runner = make_runner(config, pg_database, "a")
    job = parse_job("j", {"action": "fake", "target": "app", "interval": "1h", "args": {"labels": ["x"]}}, config)
    slot = datetime(2026, 11, 26, 18, tzinfo=UTC)
    with capture_logs() as logs:
        outcome = runner.fire(job, slot=slot)
    assert outcome is not None and outcome.result == SUCCESS
    assert fake.calls == [{"target": "app", "labels": ["x"]}]
    assert runner.ledger.result_of("j", slot) == SUCCESS
    summary = [entry for entry in logs if entry["event"] == "job finished"]
    assert len(summary) == 1 and summary[0]["result"] == SUCCESS
    assert runner.fire(job, slot=slot) is None  # the same slot never runs twice
    assert len(fake.calls) == 1


@pytest.mark.parametrize("mode", ["fail", "boom"])
def test_a_failing_action_is_recorded_as_failed_and_the_runner_survives(
    config: Config, pg_database: str, fake: FakeAction, mode: str
) -> None:
    runner = make_runner(config, pg_database, "a")
    fake.mode = mode
    job = parse_job("j", {"action": "fake", "interval": "1h"}, config)
    outcome = runner.fire(job, slot=datetime(2026, 11, 26, 18, tzinfo=UTC))
    assert outcome is not None and outcome.result == FAILED
    assert outcome.error and ("pg_dump exited 1" in outcome.error or "RuntimeError" in outcome.error)


def test_two_schedulers_sharing_the_ledger_run_each_slot_once(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    job = parse_job("every-second", {"action": "fake", "interval": "1s", "misfire_grace_time": "1h"}, config)
    schedulers = [Scheduler([job], make_runner(config, pg_database, owner), timedelta(seconds=5)) for owner in "ab"]
    for scheduler in schedulers:
        scheduler.start()
    time.sleep(3.5)
    for scheduler in schedulers:
        assert scheduler.stop()
    runs = schedulers[0].runner.ledger.runs("every-second")
    assert len(runs) >= 3
    assert len(fake.calls) == len(runs)  # one call per slot, whichever replica claimed it
    assert {run["result"] for run in runs} == {SUCCESS}


def test_start_up_catches_up_a_due_slot_that_has_no_successful_run(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    job = parse_job("hourly", {"action": "fake", "cron": "0 * * * *", "misfire_grace_time": "2h"}, config)
    runner = make_runner(config, pg_database, "a")
    slot = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    claim = runner.ledger.claim("hourly", slot)
    assert claim is not None
    runner.ledger.finish(claim, FAILED, error="earlier failure")
    scheduler = Scheduler([job], runner, timedelta(seconds=5))
    scheduler.start()
    try:
        assert fake.started.wait(10)
        assert runner.wait_idle(10)
    finally:
        scheduler.stop()
    assert runner.ledger.result_of("hourly", slot) == SUCCESS
    assert runner.ledger.runs("hourly")[0]["attempt"] == 2


def test_stop_lets_a_run_finish_within_the_grace_period_then_aborts_it(
    config: Config, pg_database: str, fake: FakeAction
) -> None:
    fake.mode = "slow"
    job = parse_job("slow", {"action": "fake", "interval": "1h"}, config)
    runner = make_runner(config, pg_database, "a")
    scheduler = Scheduler([job], runner, timedelta(seconds=1))
    scheduler.start()  # the current hour's slot is caught up at once
    assert fake.started.wait(10)
    started = time.monotonic()
    assert scheduler.stop()
    assert 0.9 <= time.monotonic() - started < 10
    assert runner.cancel.is_set()
    assert [run["result"] for run in runner.ledger.runs("slow")] == [ABORTED]
    assert runner.fire(job) is None  # a stopping runner claims nothing more


@contextlib.contextmanager
def running_daemon(tmp_path: Path, config: Config) -> Iterator[Daemon]:
    """Yield a started daemon (listening on a free port) with one hourly job of the fake action; stop it after."""
    from opskit.daemon.service import build_daemon

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "j.toml").write_text('action = "fake"\ntarget = "app"\ninterval = "1h"\nmisfire_grace_time = "1s"\n')
    daemon = build_daemon(AppContext(config=config), jobs, "127.0.0.1:0")
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_readyz_names_each_unreachable_dependency_and_livez_needs_no_network(
    tmp_path: Path, pg_database: str, fake: FakeAction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPSKIT_T_MISSING_PASSWORD", raising=False)
    config = parse_config(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\npassword = "env:OPSKIT_T_MISSING_PASSWORD"\n'
        f'[daemon]\ncontrol_dsn = "{pg_database}"\nledger_table = "runs"\n'
    )
    with running_daemon(tmp_path, config) as daemon:
        ready, detail = daemon.readyz()
        assert not ready
        assert "OPSKIT_T_MISSING_PASSWORD" in detail["checks"]["secret:targets.app.password"]
        assert detail["checks"]["control_database"] == "ok"
        assert detail["checks"]["storage:local"] == "ok"
        assert daemon.livez()[0] is True
    assert daemon.livez()[0] is False
