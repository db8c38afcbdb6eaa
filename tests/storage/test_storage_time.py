"""The storage's own time, read from a probe object it stamps, on every backend against its real server.

``opskit unlock`` and a dry run's sweep write no lock of their own, so they learn the storage's
time from a tiny probe written and removed under the target's locks; judging by this host's
clock let a host whose clock runs fast remove live locks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opskit.storage.base import StorageConfig, storage_time
from opskit.storage.registry import open_storage
from tests.storage.test_s3_default_retention import default_retention_bucket, versions

# The servers run on this host, so their clock is ours; S3 and Azure keep whole seconds.
SLACK = timedelta(seconds=2)


def test_the_storage_time_is_read_from_a_probe_that_leaves_nothing_behind(any_storage: StorageConfig) -> None:
    store = open_storage(any_storage)
    with store.writer("app/locks/lock.json") as out:
        out.write(b"{}")  # another run's lock stays as it was
    before = datetime.now(UTC)

    stamped = storage_time(store, "app/locks")

    assert before - SLACK <= stamped <= datetime.now(UTC) + SLACK
    assert stamped.tzinfo is not None
    assert [info.key for info in store.list("app/")] == ["app/locks/lock.json"]


def test_the_storage_time_probe_is_hidden_on_a_default_retention_bucket(s3_bucket: StorageConfig) -> None:
    config = default_retention_bucket(s3_bucket)
    store = open_storage(config)
    before = datetime.now(UTC)

    stamped = storage_time(store, "app/locks")

    assert before - SLACK <= stamped <= datetime.now(UTC) + SLACK
    assert list(store.list("app/")) == []  # its delete was refused: a delete marker hides it
    assert len(versions(config, "app/locks/.opskit-clock-")) == 1  # retained until its date, as every object
