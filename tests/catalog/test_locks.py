"""Repository locks on real storages: who may run beside whom, stale locks, refresh and release."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from opskit import catalog
from opskit.catalog.locks import STALE_AFTER, LockRecord, pid_namespace
from opskit.core.errors import LockHeld
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.local import LocalStorage
from opskit.storage.registry import open_storage

# The real time: staleness also counts the storage's own modification time of a lock. Set
# again as each test starts (below): a worker may run a test minutes after collecting it.
NOW = datetime.now(UTC).replace(microsecond=0)
LATER = NOW + STALE_AFTER + timedelta(minutes=5)  # when a lock written now has gone stale


@pytest.fixture(autouse=True)
def _now_is_when_the_test_runs() -> None:
    global NOW, LATER
    NOW = datetime.now(UTC).replace(microsecond=0)
    LATER = NOW + STALE_AFTER + timedelta(minutes=5)


def clock() -> datetime:
    return NOW


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage(request: pytest.FixtureRequest) -> Storage:
    config: StorageConfig = request.getfixturevalue(request.param)
    return open_storage(config)


def plant(storage: Storage, **fields: object) -> LockRecord:
    """Store a lock of another holder (host 'elsewhere' unless given) and return it."""
    record = LockRecord(
        id="20261201T115900Z-000000000001",
        target="app",
        operation="backup",
        exclusive=False,
        host="elsewhere",
        pid=1,
        created=NOW - timedelta(minutes=1),
        refreshed=NOW - timedelta(minutes=1),
    )
    record = replace(record, **fields)  # type: ignore[arg-type]
    assert storage.create(record.key, record.to_json())
    return record


def lock_keys(storage: Storage) -> list[str]:
    return sorted(info.key for info in storage.list("app/locks/"))


def test_shared_locks_are_held_together_and_each_is_removed_on_release(storage: Storage) -> None:
    with catalog.locked(storage, "app", "backup", clock=clock), catalog.locked(storage, "app", "pin", clock=clock):
        assert len(lock_keys(storage)) == 2
    assert lock_keys(storage) == []


def test_a_prune_is_refused_with_exit_7_naming_the_running_backup_and_leaves_no_lock(storage: Storage) -> None:
    backup = plant(storage, operation="backup", backup_id="20261201T115900Z-ab12")

    with pytest.raises(LockHeld) as caught:
        catalog.acquire_lock(storage, "app", "prune", clock=clock)

    assert caught.value.exit_code == 7
    line = caught.value.one_line()
    since = catalog.format_time(NOW - timedelta(minutes=1))
    assert f"is locked by backup (shared) by pid 1 on host 'elsewhere' since {since}" in line
    assert "opskit unlock --target app" in line
    assert lock_keys(storage) == [backup.key]


def test_nothing_runs_beside_a_prune(storage: Storage) -> None:
    plant(storage, operation="prune", exclusive=True)

    for operation in ("backup", "pin", "copy", "verify", "drill"):
        with pytest.raises(LockHeld, match="locked by prune \\(exclusive\\)"):
            catalog.acquire_lock(storage, "app", operation, clock=clock)


def backdate(storage: Storage, key: str, age: timedelta) -> None:
    """Set the storage's own modification time of ``key`` to ``age`` ago (local disk: its mtime).

    Staleness is judged by the storage's clock, so a lock that went stale must be old by that
    clock; an object store's time cannot be set, which is why such tests run on local disk.
    """
    assert isinstance(storage, LocalStorage)
    then = (datetime.now(UTC) - age).timestamp()
    os.utime(storage.root / key, (then, then))


def test_a_lock_not_refreshed_for_ten_minutes_blocks_nobody(local_storage: StorageConfig) -> None:
    storage = open_storage(local_storage)
    lock = plant(storage, operation="prune", exclusive=True, created=NOW - (LATER - NOW), refreshed=NOW - (LATER - NOW))
    backdate(storage, lock.key, LATER - NOW)

    with catalog.locked(storage, "app", "backup", clock=clock):
        pass


def test_a_lock_refreshed_recently_by_its_own_clock_is_live_even_if_written_long_ago(storage: Storage) -> None:
    plant(storage, operation="prune", exclusive=True, refreshed=LATER - timedelta(minutes=1))

    with pytest.raises(LockHeld):
        catalog.acquire_lock(storage, "app", "backup", clock=lambda: LATER)


def test_a_lock_of_a_process_gone_from_this_host_is_stale_at_once(storage: Storage) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    plant(storage, operation="prune", exclusive=True, host=socket.gethostname(), pid=int(dead.stdout))

    with catalog.locked(storage, "app", "backup", clock=clock):
        pass


def test_a_lock_taken_in_another_target_does_not_conflict(storage: Storage) -> None:
    plant(storage, operation="prune", exclusive=True, target="other")

    with catalog.locked(storage, "app", "backup", clock=clock):
        pass


def test_the_lock_is_removed_when_the_block_raises(storage: Storage) -> None:
    with pytest.raises(RuntimeError), catalog.locked(storage, "app", "prune", clock=clock):
        raise RuntimeError("boom")
    assert lock_keys(storage) == []


def test_a_refresh_rewrites_the_time_and_a_removed_lock_is_noticed(storage: Storage) -> None:
    times = iter([NOW, NOW + timedelta(minutes=1)])
    held = catalog.acquire_lock(storage, "app", "prune", clock=lambda: next(times))
    try:
        held.refresh()
        [record] = catalog.list_locks(storage, "app")
        assert record.refreshed == NOW + timedelta(minutes=1)
        held.check()  # still ours

        storage.delete(held.record.key)  # opskit unlock --all

        with pytest.raises(LockHeld, match="was removed while it ran"):
            held.check()
    finally:
        held.release()


def test_unlock_removes_stale_locks_only_unless_all_and_a_dry_run_removes_nothing(storage: Storage) -> None:
    stale = plant(storage, id="20261201T110000Z-000000000002", refreshed=NOW)
    live = plant(storage, id="20261201T115900Z-000000000003", refreshed=LATER - timedelta(minutes=1))
    storage.create("app/locks/garbage.json", b"not json")

    assert set(catalog.remove_locks(storage, "app", now=LATER, dry_run=True)) == {stale.key, "app/locks/garbage.json"}
    assert len(lock_keys(storage)) == 3
    assert set(catalog.remove_locks(storage, "app", now=LATER)) == {stale.key, "app/locks/garbage.json"}
    assert lock_keys(storage) == [live.key]
    assert catalog.remove_locks(storage, "app", now=LATER, stale_only=False) == [live.key]
    assert lock_keys(storage) == []


def test_a_held_lock_is_refreshed_by_its_thread_while_the_run_goes_on(storage: Storage) -> None:
    ticks = iter(NOW + timedelta(seconds=n) for n in range(10_000))
    held = catalog.acquire_lock(
        storage, "app", "backup", clock=lambda: next(ticks), refresh_every=timedelta(seconds=0.05)
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [record] = catalog.list_locks(storage, "app")
            if record.refreshed > record.created:
                break
            time.sleep(0.05)
        assert record.refreshed > record.created
    finally:
        held.release()
    assert lock_keys(storage) == []


def test_a_dead_pid_in_another_pid_namespace_of_this_host_is_not_judged_dead(storage: Storage) -> None:
    # A container with --network host shares the host's name but not its pids: its live lock
    # must not be removed because this host has no such pid.
    here = pid_namespace()
    assert here is not None
    other = plant(storage, host=socket.gethostname(), pid=2**22 + 7, refreshed=NOW, pid_namespace="pid:[1]")

    with pytest.raises(LockHeld):
        catalog.acquire_lock(storage, "app", "prune", clock=clock)
    assert other.key in [info.key for info in storage.list("app/locks/")]

    mine = plant(
        storage,
        id="20261201T115900Z-000000000009",
        host=socket.gethostname(),
        pid=2**22 + 7,
        refreshed=NOW,
        pid_namespace=here,
    )
    with catalog.locked(storage, "app", "backup", clock=clock):  # the other container's lock is shared
        pass
    assert mine.key not in [info.key for info in storage.list("app/locks/")]  # ours, gone: removed
