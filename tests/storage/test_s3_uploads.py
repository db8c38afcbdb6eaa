"""S3 specifics on a real S3 server (moto): multipart uploads, their sweep, SSE and storage class."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from opskit.storage.s3 import S3Storage
from tests.servers import SMALL_PART_SIZE, s3_client


def client_for(config: StorageConfig) -> Any:
    """Return a boto3 client straight to the test server behind ``config``."""
    return s3_client(str(config.options["endpoint_url"]))


def bucket_of(config: StorageConfig) -> str:
    return config.url.removeprefix("s3://").split("/")[0]


def open_s3(config: StorageConfig, **options: Any) -> S3Storage:
    storage = open_storage(replace(config, part_size=SMALL_PART_SIZE, options={**config.options, **options}))
    assert isinstance(storage, S3Storage)
    return storage


def test_a_failed_write_aborts_its_multipart_upload(s3_bucket: StorageConfig) -> None:
    storage = open_s3(s3_bucket)
    with pytest.raises(RuntimeError), storage.writer("app/1/db.dump.zst") as out:
        out.write(os.urandom(3 * SMALL_PART_SIZE))  # two parts are uploaded, the third is held back
        raise RuntimeError("pg_dump died")
    uploads = client_for(s3_bucket).list_multipart_uploads(Bucket=bucket_of(s3_bucket))
    assert uploads.get("Uploads", []) == []


def test_a_large_object_is_one_multipart_upload_with_parts_of_the_configured_size(
    s3_bucket: StorageConfig,
) -> None:
    storage = open_s3(s3_bucket)
    with storage.writer("big") as out:
        out.write(os.urandom(3 * SMALL_PART_SIZE + 1))
    head = client_for(s3_bucket).head_object(Bucket=bucket_of(s3_bucket), Key="backups/big", PartNumber=1)
    assert head["PartsCount"] == 4
    assert head["ContentLength"] == SMALL_PART_SIZE


def test_abandoned_uploads_are_listed_by_a_dry_run_and_aborted_by_a_real_sweep(
    s3_bucket: StorageConfig,
) -> None:
    storage = open_s3(s3_bucket)
    client = client_for(s3_bucket)
    bucket = bucket_of(s3_bucket)
    client.create_multipart_upload(Bucket=bucket, Key="backups/app/1/db.dump.zst")
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/x")  # outside the storage's prefix
    later = datetime.now(UTC) + timedelta(minutes=5)

    assert storage.abort_incomplete_uploads("app/", later, dry_run=True) == ["app/1/db.dump.zst"]
    assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 2
    # moto reports every upload as initiated on 2010-11-10: a cut-off before that spares them all.
    assert storage.abort_incomplete_uploads("", datetime(2010, 1, 1, tzinfo=UTC), dry_run=False) == []
    assert storage.abort_incomplete_uploads("", later, dry_run=False) == ["app/1/db.dump.zst"]
    assert [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == ["elsewhere/x"]


@pytest.mark.parametrize("size", [10, 2 * SMALL_PART_SIZE + 1], ids=["single-put", "multipart"])
def test_sse_and_storage_class_are_applied_to_every_write(s3_bucket: StorageConfig, size: int) -> None:
    storage = open_s3(s3_bucket, sse="AES256", storage_class="STANDARD_IA")
    with storage.writer("enc") as out:
        out.write(os.urandom(size))
    head = client_for(s3_bucket).head_object(Bucket=bucket_of(s3_bucket), Key="backups/enc")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"


def test_path_style_addressing_reaches_the_same_bucket(s3_bucket: StorageConfig) -> None:
    storage = open_s3(s3_bucket, path_style=True)
    with storage.writer("x") as out:
        out.write(b"path style")
    assert open_s3(s3_bucket).exists("x")
