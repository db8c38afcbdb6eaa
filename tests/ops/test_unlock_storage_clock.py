"""``opskit unlock`` judges locks by the storage's time, not by the clock of the host it runs on.

unlock writes no lock of its own, so it used to age every lock by its host's clock: on a host
whose clock ran 15 minutes fast it removed a running backup's live lock, on one 15 minutes slow
it kept a dead run's lock. It now reads the storage's time from a probe object it writes and
removes under the target's locks (in a dry run too: the probe is its only write).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opskit.catalog.locks import LockRecord
from opskit.ops import unlock
from opskit.storage.base import Storage, StorageConfig
from tests.catalog.test_locks import backdate
from tests.ops.test_prune import make_context

SKEWS = {"fast": timedelta(minutes=15), "slow": timedelta(minutes=-15)}


def plant(store: Storage, lock_id: str, age: timedelta) -> LockRecord:
    """Store the lock of a backup on host 'db2' last refreshed ``age`` ago, by its clock and the storage's."""
    refreshed = datetime.now(UTC) - age
    lock = LockRecord(lock_id, "app", "backup", False, "db2", 4242, refreshed, refreshed, "20261204T150000Z-ab12")
    assert store.create(lock.key, lock.to_json())
    if age:
        backdate(store, lock.key, age)  # local disk only: an object store's time cannot be set back
    return lock


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "real"])
@pytest.mark.parametrize("skew", list(SKEWS), ids=list(SKEWS))
def test_unlock_on_a_host_whose_clock_is_15_minutes_off_keeps_the_live_lock_and_removes_the_dead_one(
    local_storage: StorageConfig, skew: str, dry_run: bool
) -> None:
    ctx = make_context([local_storage], policy=None, clock=lambda: datetime.now(UTC) + SKEWS[skew])
    store = ctx.storage(local_storage.name)
    live = plant(store, "20261204T150000Z-00000000a11e", timedelta(0))
    dead = plant(store, "20261204T150000Z-00000000dead", timedelta(minutes=15))

    report = unlock.run(ctx, target="app", dry_run=dry_run)

    assert [key for _, _, key in report.removed] == [dead.key]
    [(_, _, holder)] = report.kept
    assert holder.startswith("backup (shared) by pid 4242 on host 'db2'")
    direction = "ahead of" if skew == "fast" else "behind"
    assert f"this host's clock runs 15 min {direction} the storage's; judged by the storage's time" in holder
    left = {info.key for info in store.list("app/")}
    assert left == ({live.key, dead.key} if dry_run else {live.key})  # the probe is gone too


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "real"])
def test_unlock_on_a_host_whose_clock_runs_15_minutes_fast_keeps_a_live_lock_in_every_kind_of_storage(
    any_storage: StorageConfig, dry_run: bool
) -> None:
    ctx = make_context([any_storage], policy=None, clock=lambda: datetime.now(UTC) + timedelta(minutes=15))
    store = ctx.storage(any_storage.name)
    live = plant(store, "20261204T150000Z-00000000a11e", timedelta(0))  # the store stamps it now

    report = unlock.run(ctx, target="app", dry_run=dry_run)

    assert report.removed == []
    assert len(report.kept) == 1
    assert [info.key for info in store.list("app/")] == [live.key]
