"""A run whose own clock is wrong judges other runs' locks by the storage's time, not by its clock.

The lock object of a running backup on another host is written now, by the storage's clock. A
prune on a host whose clock runs 15 minutes fast used to see it as "not refreshed for 10 min",
ignore it and sweep the backup's dump from under it; a host whose clock runs 3 hours slow kept a
dead run's lock for 3 hours. The run's own lock, written just before it lists the others, gives
the storage's time.
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
from tests.ops.test_prune import make_context

BACKUP_ID = "20261204T150000Z-ab12"


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


def plant_running_backup(storage: Storage, refreshed: datetime) -> LockRecord:
    """Store a backup's half-written folder (a dump, no manifest) and its lock from host 'db2'."""
    with storage.writer(f"app/{BACKUP_ID}/db.dump.zst") as out:
        out.write(b"dump bytes of a backup still running")
    lock = LockRecord(
        "20261204T150000Z-0000000000b1", "app", "backup", False, "db2", 4242, refreshed, refreshed, BACKUP_ID
    )
    assert storage.create(lock.key, lock.to_json())
    return lock


def test_a_prune_whose_clock_runs_fast_is_refused_beside_a_running_backup_and_sweeps_nothing(
    storage_config: StorageConfig,
) -> None:
    real_now = datetime.now(UTC)
    fast = real_now + timedelta(minutes=15)
    ctx = make_context([storage_config], RetentionPolicy(keep_last=1), clock=lambda: fast)
    store = ctx.storage(storage_config.name)
    lock = plant_running_backup(store, refreshed=real_now)

    with pytest.raises(LockHeld) as caught:
        prune.run(ctx, target="app", grace="0s")

    assert caught.value.exit_code == 7
    assert "is locked by backup (shared) by pid 4242 on host 'db2'" in caught.value.one_line()
    assert {info.key for info in store.list("app/")} == {f"app/{BACKUP_ID}/db.dump.zst", lock.key}


def test_a_run_whose_clock_runs_slow_treats_a_lock_dead_for_15_minutes_by_the_storages_time_as_stale(
    local_storage: StorageConfig,
) -> None:
    store = open_storage(local_storage)
    real_now = datetime.now(UTC)
    dead_since = real_now - timedelta(minutes=15)
    lock = LockRecord("20261204T150000Z-0000000000d1", "app", "prune", True, "db2", 4242, dead_since, dead_since)
    assert store.create(lock.key, lock.to_json())
    backdate(store, lock.key, timedelta(minutes=15))

    with catalog.locked(store, "app", "backup", clock=lambda: real_now - timedelta(hours=3)):
        pass  # not locked out for 3 hours by a prune that died a quarter of an hour ago


def test_a_run_whose_clock_runs_fast_is_refused_beside_a_live_exclusive_lock(storage_config: StorageConfig) -> None:
    store = open_storage(storage_config)
    real_now = datetime.now(UTC)
    lock = LockRecord("20261204T150000Z-0000000000e1", "app", "prune", True, "db2", 4242, real_now, real_now)
    assert store.create(lock.key, lock.to_json())

    with pytest.raises(LockHeld, match="is locked by prune \\(exclusive\\)"):
        catalog.acquire_lock(store, "app", "backup", clock=lambda: real_now + timedelta(minutes=15))
    assert [info.key for info in store.list("app/locks/")] == [lock.key]
