"""Prune's sweep and the lock messages judge by the storage's time, whatever this host's clock says.

The sweep leaves alone the folder of a backup whose lock is live. It aged those locks by this
host's clock: a dry run on a host 15 minutes fast listed a running backup's dump as a leftover to
sweep, and a prune on a host 15 minutes slow kept a dead backup's leftovers. A host whose own
clock ran slow was told that the *writer's* clock was ahead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opskit import catalog
from opskit.catalog.locks import LockRecord
from opskit.config.retention import RetentionPolicy
from opskit.core.errors import LockHeld
from opskit.ops import prune
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.registry import open_storage
from tests.catalog.test_locks import backdate
from tests.catalog.test_locks_skewed_judge import BACKUP_ID, plant_running_backup
from tests.ops.test_prune import make_context


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


def backdate_folder(store: Storage, age: timedelta) -> None:
    for info in store.list(f"app/{BACKUP_ID}/"):
        backdate(store, info.key, age)


def test_a_dry_run_prune_whose_clock_runs_fast_sweeps_nothing_of_a_running_backup(
    storage_config: StorageConfig,
) -> None:
    real_now = datetime.now(UTC)
    ctx = make_context([storage_config], RetentionPolicy(keep_last=1), clock=lambda: real_now + timedelta(minutes=15))
    store = ctx.storage(storage_config.name)
    lock = plant_running_backup(store, refreshed=real_now)

    report = prune.run(ctx, target="app", grace="0s", dry_run=True)

    assert report.results[0].swept == []
    assert {info.key for info in store.list("app/")} == {f"app/{BACKUP_ID}/db.dump.zst", lock.key}


def test_a_prune_whose_clock_runs_slow_sweeps_the_leftovers_of_a_backup_dead_for_15_minutes(
    local_storage: StorageConfig,
) -> None:
    real_now = datetime.now(UTC)
    ctx = make_context([local_storage], RetentionPolicy(keep_last=1), clock=lambda: real_now - timedelta(minutes=15))
    store = ctx.storage(local_storage.name)
    lock = plant_running_backup(store, refreshed=real_now - timedelta(minutes=15))
    backdate(store, lock.key, timedelta(minutes=15))
    # Older than the skew: the grace period is measured by this run's clock (not what is tested here).
    backdate_folder(store, timedelta(minutes=30))

    report = prune.run(ctx, target="app", grace="0s")

    assert report.results[0].swept == [f"app/{BACKUP_ID}/db.dump.zst"]
    assert not store.exists(f"app/{BACKUP_ID}/db.dump.zst")


def test_a_run_whose_own_clock_runs_slow_is_told_so_not_that_the_writers_clock_is_ahead(
    storage_config: StorageConfig,
) -> None:
    store = open_storage(storage_config)
    now = datetime.now(UTC)
    live = LockRecord("20261204T150000Z-0000000000e1", "app", "prune", True, "db2", 4242, now, now)
    assert store.create(live.key, live.to_json())

    with pytest.raises(LockHeld) as caught:
        catalog.acquire_lock(store, "app", "backup", clock=lambda: now - timedelta(hours=3))

    line = caught.value.one_line()
    assert "is locked by prune (exclusive) by pid 4242 on host 'db2'" in line
    assert "(this host's clock runs 3h 0min behind the storage's; judged by the storage's time, " in line
    assert "the writer's clock is ahead" not in line
