"""Immutable backups against real servers: S3 Object Lock on moto, what the GCS emulator and Azurite allow.

moto implements Object Lock on a bucket created with it enabled: retention on PutObject, a
refused DeleteObject of a locked version (governance without the bypass header, compliance
always). It ignores the retention headers of CreateMultipartUpload, which is why the S3
writer checks every locked object after it is written and sets the retention when missing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opskit.config.load import build_config
from opskit.core.errors import ConfigError, ObjectLocked, StorageError
from opskit.storage.base import Immutability, ObjectLocks, StorageConfig
from opskit.storage.registry import open_storage
from tests.servers import SMALL_PART_SIZE, s3_client, unique_name

GOVERNANCE_DAY = Immutability(mode="governance", days=1)


def bucket_of(config: StorageConfig) -> str:
    """Return the bucket name of an ``s3://bucket/prefix`` config."""
    return config.url.removeprefix("s3://").split("/", 1)[0]


@pytest.fixture
def locked_bucket(s3_bucket: StorageConfig) -> Iterator[StorageConfig]:
    """Yield a config for a fresh moto bucket created with Object Lock, the storage set immutable."""
    client: Any = s3_client(str(s3_bucket.options["endpoint_url"]))
    bucket = unique_name("opskit-t-lock")
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    options = {**s3_bucket.options, "immutable": GOVERNANCE_DAY}
    yield replace(s3_bucket, url=f"s3://{bucket}/backups", options=options, part_size=SMALL_PART_SIZE)


def raw_client(config: StorageConfig) -> Any:
    """Return a plain boto3 client on the config's server: what someone with the credentials could do."""
    return s3_client(str(config.options["endpoint_url"]))


def versions_of(config: StorageConfig, key: str) -> list[dict[str, Any]]:
    """Return every version and delete marker stored under ``backups/<key>``."""
    page = raw_client(config).list_object_versions(Bucket=bucket_of(config), Prefix=f"backups/{key}")
    return [v for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])] if v["Key"] == f"backups/{key}"]


def write(config: StorageConfig, key: str, data: bytes, immutable: bool) -> None:
    store = open_storage(config)
    with store.writer(key, immutable=immutable) as out:
        out.write(data)


# --------------------------------------------------------------------------- S3 Object Lock (moto)


@pytest.mark.parametrize("size", [1024, 3 * SMALL_PART_SIZE + 17], ids=["single put", "multipart"])
def test_a_backup_object_is_stored_under_retention_and_no_one_can_delete_its_version(
    locked_bucket: StorageConfig, size: int
) -> None:
    before = datetime.now(UTC)
    write(locked_bucket, "app/b1/db.dump.zst", secrets.token_bytes(size), immutable=True)

    head = raw_client(locked_bucket).head_object(Bucket=bucket_of(locked_bucket), Key="backups/app/b1/db.dump.zst")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert before + timedelta(days=1) - timedelta(minutes=1) <= head["ObjectLockRetainUntilDate"]
    assert head["ObjectLockRetainUntilDate"] <= datetime.now(UTC) + timedelta(days=1)
    (version,) = versions_of(locked_bucket, "app/b1/db.dump.zst")
    with pytest.raises(Exception, match="AccessDenied"):
        raw_client(locked_bucket).delete_object(
            Bucket=bucket_of(locked_bucket), Key="backups/app/b1/db.dump.zst", VersionId=version["VersionId"]
        )
    assert len(versions_of(locked_bucket, "app/b1/db.dump.zst")) == 1


def test_opskit_delete_of_a_locked_object_is_refused_with_its_date_and_the_object_stays(
    locked_bucket: StorageConfig,
) -> None:
    write(locked_bucket, "app/b1/manifest.json", b"{}", immutable=True)
    store = open_storage(locked_bucket)

    with pytest.raises(ObjectLocked) as refused:
        store.delete("app/b1/manifest.json")

    assert "'app/b1/manifest.json' is immutable until " in refused.value.one_line()
    assert refused.value.exit_code == 4
    with store.reader("app/b1/manifest.json") as inp:
        assert inp.read() == b"{}"
    assert [v.get("IsLatest") for v in versions_of(locked_bucket, "app/b1/manifest.json")] == [True]


def test_records_written_without_immutable_are_deleted_with_every_version(locked_bucket: StorageConfig) -> None:
    write(locked_bucket, "app/b1/pin.json", b"{}", immutable=False)
    write(locked_bucket, "app/b1/pin.json", b"{ }", immutable=False)
    store = open_storage(locked_bucket)
    assert isinstance(store, ObjectLocks) and store.retained_until("app/b1/pin.json") is None

    store.delete("app/b1/pin.json")

    assert versions_of(locked_bucket, "app/b1/pin.json") == []
    assert not store.exists("app/b1/pin.json")


def test_check_writable_leaves_no_probe_version_behind_on_a_locked_bucket(locked_bucket: StorageConfig) -> None:
    open_storage(locked_bucket).check_writable()

    page = raw_client(locked_bucket).list_object_versions(Bucket=bucket_of(locked_bucket))
    assert page.get("Versions", []) == [] and page.get("DeleteMarkers", []) == []


def test_lock_state_says_whether_the_bucket_has_object_lock(
    locked_bucket: StorageConfig, s3_bucket: StorageConfig
) -> None:
    locked, plain = open_storage(locked_bucket), open_storage(s3_bucket)
    assert isinstance(locked, ObjectLocks) and isinstance(plain, ObjectLocks)

    assert locked.lock_state().enabled is True
    assert "has Object Lock enabled" in locked.lock_state().detail
    assert plain.lock_state().enabled is False
    assert plain.lock_state().detail == f"bucket '{bucket_of(s3_bucket)}' has no Object Lock"


def test_an_immutable_storage_on_a_bucket_without_object_lock_fails_the_write_and_says_how_to_fix_it(
    s3_bucket: StorageConfig,
) -> None:
    config = replace(s3_bucket, options={**s3_bucket.options, "immutable": GOVERNANCE_DAY})

    with pytest.raises(StorageError) as failed:
        write(config, "app/b1/db.dump.zst", b"x" * 100, immutable=True)

    assert "the bucket has no Object Lock" in failed.value.one_line()
    assert not open_storage(s3_bucket).exists("app/b1/db.dump.zst")


def test_a_server_side_copy_to_an_immutable_storage_carries_its_retention(
    locked_bucket: StorageConfig, s3_bucket: StorageConfig
) -> None:
    write(s3_bucket, "app/b1/db.dump.zst", b"dump" * 100, immutable=True)
    dest = open_storage(locked_bucket)

    assert dest.copy_from(open_storage(s3_bucket), "app/b1/db.dump.zst")  # type: ignore[attr-defined]

    assert isinstance(dest, ObjectLocks)
    until = dest.retained_until("app/b1/db.dump.zst")
    assert until is not None and until > datetime.now(UTC) + timedelta(hours=23)


# --------------------------------------------------------------------------- configuration


def test_the_immutable_table_becomes_the_storage_option() -> None:
    raw = {"storages": {"s": {"url": "s3://bucket/backups", "immutable": {"mode": "compliance", "days": 30}}}}

    config = build_config(raw)

    assert config.storages["s"].options["immutable"] == Immutability("compliance", 30)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"mode": "forever", "days": 3}, "At 'storages.s.immutable.mode': must be one of governance, compliance"),
        ({"mode": "governance"}, "At 'storages.s.immutable.days': is required"),
        ({"days": 0}, "At 'storages.s.immutable.days': must be at least 1"),
        ({"days": 3, "years": 1}, "At 'storages.s.immutable.years': unknown key"),
        ("30d", "At 'storages.s.immutable': must be a table"),
    ],
)
def test_a_bad_immutable_table_is_one_line_naming_the_key(table: object, problem: str) -> None:
    with pytest.raises(ConfigError) as bad:
        build_config({"storages": {"s": {"url": "s3://bucket/backups", "immutable": table}}})

    assert problem in bad.value.one_line()


def test_immutable_is_an_s3_option_only() -> None:
    with pytest.raises(ConfigError) as bad:
        build_config({"storages": {"g": {"url": "gs://bucket/backups", "immutable": {"days": 3}}}})

    assert "At 'storages.g.immutable': unknown key" in bad.value.one_line()
