"""Repository locks are really gone once released: on a bucket whose default retention locks every
object, and when a slow refresh lands after the release.

A lock object that stays listed after its run ended blocks every conflicting run (exit 7) until it
goes stale, ten minutes later; in the daemon, whose pid stays alive, even its own next job.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.catalog.locks import LockRecord
from opskit.cli import main
from opskit.storage.base import Immutability, ObjectInfo, StorageConfig
from opskit.storage.local import LocalStorage
from opskit.storage.registry import open_storage
from tests.servers import s3_client
from tests.storage.test_s3_default_retention import default_retention_bucket as new_retention_bucket


def clock() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def default_retention_bucket(s3_bucket: StorageConfig) -> StorageConfig:
    """Return a config for a fresh moto bucket with a default retention of one day, ``immutable`` set.

    What an operator gets by following the 'enable Object Lock' advice with
    put-object-lock-configuration and a rule: every new object, lock objects too, is retained.
    """
    return new_retention_bucket(s3_bucket, immutable=Immutability(mode="governance", days=1))


def retained_versions(config: StorageConfig, prefix: str) -> list[str]:
    """Return the keys of the object versions (not delete markers) stored under ``backups/<prefix>``."""
    bucket = config.url.removeprefix("s3://").split("/", 1)[0]
    client: Any = s3_client(str(config.options["endpoint_url"]))
    page = client.list_object_versions(Bucket=bucket, Prefix=f"backups/{prefix}")
    return [version["Key"] for version in page.get("Versions", [])]


def test_a_released_lock_on_a_default_retention_bucket_no_longer_blocks_the_next_run(
    default_retention_bucket: StorageConfig,
) -> None:
    store = open_storage(default_retention_bucket)

    with catalog.locked(store, "app", "prune", clock=clock):
        pass

    assert list(store.list("app/locks/")) == []
    # The same process (the daemon runs a backup right after its prune) is not locked out by it.
    with catalog.locked(store, "app", "backup", clock=clock):
        pass
    assert list(store.list("app/locks/")) == []
    # Nothing the retention protects was destroyed: both locks' versions are still stored, hidden.
    assert len(retained_versions(default_retention_bucket, "app/locks/")) == 2


def test_unlock_all_removes_a_live_lock_on_a_default_retention_bucket(
    default_retention_bucket: StorageConfig, tmp_path: Path
) -> None:
    store = open_storage(default_retention_bucket)
    now = clock()
    held = LockRecord("20261201T000000Z-00000000a11e", "app", "prune", True, "db2", 4242, now, now)
    assert store.create(held.key, held.to_json())
    options = default_retention_bucket.options
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.vault]\nurl = "{default_retention_bucket.url}"\nendpoint_url = "{options["endpoint_url"]}"\n'
        f'region = "us-east-1"\nimmutable = {{ mode = "governance", days = 1 }}\n\n'
        '[targets.app]\ndsn = "host=127.0.0.1 user=postgres dbname=test"\nstorages = ["vault"]\n'
    )

    result = CliRunner().invoke(main, ["--config", str(config), "unlock", "--all", "--json"])

    assert result.exit_code == 0, result.output
    assert '"key": "app/locks/20261201T000000Z-00000000a11e.json"' in result.stdout
    assert list(store.list("app/locks/")) == []
    with catalog.locked(store, "app", "backup", clock=clock):
        pass


class SlowRefreshStorage:
    """A local storage whose rewrite of an existing lock waits until the lock was deleted.

    That is a refresh stuck on a slow store for longer than ``release()`` waits for it (5 s): the
    release deletes the lock, then the refresh's write lands.
    """

    kind = "file"

    def __init__(self, inner: LocalStorage) -> None:
        self.inner = inner
        self.name = inner.name
        self.url = inner.url
        self.refreshing = threading.Event()
        self.deleted = threading.Event()

    @contextmanager
    def writer(self, key: str, *, immutable: bool = False) -> Iterator[BinaryIO]:
        if key.startswith("app/locks/"):
            self.refreshing.set()
            self.deleted.wait(timeout=30)
        with self.inner.writer(key, immutable=immutable) as out:
            yield out

    def reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        return self.inner.reader(key)

    def create(self, key: str, data: bytes) -> bool:
        return self.inner.create(key, data)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self.deleted.set()

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def check_writable(self) -> None:
        self.inner.check_writable()


def test_a_refresh_that_lands_after_the_release_does_not_leave_the_lock_behind(tmp_path: Path) -> None:
    store = SlowRefreshStorage(LocalStorage("local", f"file://{tmp_path}", tmp_path))
    held = catalog.acquire_lock(store, "app", "prune", clock=clock, refresh_every=timedelta(seconds=0.05))
    assert store.refreshing.wait(timeout=10)

    held.release()  # waits 5 s for the stuck refresh, then deletes the lock
    held._thread.join(timeout=30)

    assert not held._thread.is_alive()
    assert list(store.list("app/locks/")) == []
