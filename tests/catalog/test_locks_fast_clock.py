"""A lock written by a host whose clock runs fast: its future ``refreshed`` time does not keep it live.

The lock object is crafted as another host would leave it (``refreshed`` three hours ahead);
the storage's own modification time is the real one, so the lock goes stale ten minutes after
it was last written, and ``unlock`` says the writer's clock is ahead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.catalog.locks import STALE_AFTER, LockRecord
from opskit.cli import main
from opskit.core.errors import LockHeld
from opskit.ops import unlock
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.local import LocalStorage
from opskit.storage.registry import open_storage
from tests.catalog.test_locks import backdate, plant
from tests.ops.test_prune import make_context


@dataclass(frozen=True)
class Moments:
    """The test's now (the storage stamps the crafted lock with the real time) and a later moment."""

    now: datetime
    later: datetime  # nothing has rewritten the lock since


@pytest.fixture
def moments() -> Moments:
    # Taken when the test runs, not when the module is collected: a worker may reach it minutes later.
    now = datetime.now(UTC).replace(microsecond=0)
    return Moments(now, now + STALE_AFTER + timedelta(minutes=5))


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage(request: pytest.FixtureRequest) -> Storage:
    config: StorageConfig = request.getfixturevalue(request.param)
    return open_storage(config)


def plant_fast_clock_prune(storage: Storage, now: datetime) -> LockRecord:
    """Store the exclusive lock of a prune on 'otherhost' whose clock is three hours ahead of ``now``."""
    ahead = now + timedelta(hours=3)
    return plant(
        storage,
        id="20261204T150000Z-00000000000f",
        operation="prune",
        exclusive=True,
        host="otherhost",
        pid=4242,
        created=ahead,
        refreshed=ahead,
    )


def test_a_lock_refreshed_in_the_future_goes_stale_by_the_storages_time(storage: Storage, moments: Moments) -> None:
    NOW, LATER = moments.now, moments.later
    planted = plant_fast_clock_prune(storage, NOW)

    with pytest.raises(LockHeld) as caught:  # just written: live, and the message says why its time is odd
        catalog.acquire_lock(storage, "app", "backup", clock=lambda: NOW)
    assert "the writer's clock is ahead" in caught.value.message
    if isinstance(storage, LocalStorage):  # an object store's time cannot be set back
        backdate(storage, planted.key, LATER - NOW)
        with catalog.locked(storage, "app", "backup", clock=lambda: NOW):
            pass  # ten minutes after its last write, by the storage's clock, it blocks nobody

    assert catalog.remove_locks(storage, "app", now=LATER) != []
    assert list(storage.list("app/locks/")) == []


def test_unlock_keeps_a_fresh_fast_clock_lock_and_says_the_writers_clock_is_ahead(
    local_storage: StorageConfig, tmp_path: Path, moments: Moments
) -> None:
    NOW, LATER = moments.now, moments.later
    ctx = make_context([local_storage], policy=None, clock=lambda: NOW)
    planted = plant_fast_clock_prune(ctx.storage(local_storage.name), NOW)

    report = unlock.run(ctx, target="app")

    assert report.removed == []
    [(_, _, holder)] = report.kept
    assert "3h 0min in the future: the writer's clock is ahead; judged by the storage's time" in holder

    # Ten minutes after its last write by the storage's clock (unlock judges by it, not by its own).
    backdate(ctx.storage(local_storage.name), planted.key, LATER - NOW)
    assert [key for _, _, key in unlock.run(ctx, target="app").removed] == [planted.key]


def test_the_unlock_command_names_the_fast_clock(
    local_storage: StorageConfig, tmp_path: Path, moments: Moments
) -> None:
    plant_fast_clock_prune(open_storage(local_storage), moments.now)
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.local]\nurl = "{local_storage.url}"\n\n[targets.app]\n'
        'dsn = "host=127.0.0.1 user=postgres dbname=test"\nstorages = ["local"]\n'
    )

    result = CliRunner().invoke(main, ["--config", str(config), "unlock", "--target", "app"])

    assert result.exit_code == 0, result.output
    assert "kept live lock of target 'app' in storage 'local': prune (exclusive)" in result.stdout
    assert "the writer's clock is ahead" in result.stdout
