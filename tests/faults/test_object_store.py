"""Faults: the object store failing under a backup (a fault proxy in front of the moto S3 server).

Bursts of 500/503 and connections reset mid-part are retried per request: the backup
completes and the stored object has exactly the sha256 the manifest records. When the
faults outlast the retries the backup fails cleanly: exit 4, one line naming the storage
and the request, the multipart upload aborted, no manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.storage.base import StorageConfig
from tests.faultproxy import FaultProxy
from tests.faults.helpers import add_random_bytes, one_line_error, s3_objects, s3_uploads, write_setup
from tests.servers import s3_client, through_proxy, upstream_of

PART = "partNumber="


@pytest.fixture
def proxy(s3_bucket: StorageConfig) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_of(s3_bucket)) as running:
        yield running


def stored_sha256(storage: StorageConfig, key: str) -> str:
    """Return the sha256 of an object read straight from the S3 server (not through the proxy)."""
    bucket, _, prefix = storage.url.removeprefix("s3://").partition("/")
    client = s3_client(str(storage.options["endpoint_url"]))
    body = client.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()  # type: ignore[attr-defined]
    return hashlib.sha256(body).hexdigest()


def test_bursts_of_5xx_and_resets_mid_part_are_retried_and_the_backup_is_intact(
    tmp_path: Path, database: str, s3_bucket: StorageConfig, proxy: FaultProxy
) -> None:
    add_random_bytes(database, 1)
    # Up to 8 attempts per request: even if one part draws all five part faults, it still succeeds.
    setup = write_setup(tmp_path, database, through_proxy(s3_bucket, proxy.url), part_size="256KiB", max_attempts=8)
    proxy.fail_next(2, status=503, method="PUT", path_contains=PART)
    proxy.fail_next(1, mode="reset", method="PUT", path_contains=PART)
    proxy.fail_next(2, status=500, method="PUT", path_contains=PART)
    proxy.fail_next(1, status=503, method="POST", path_contains="uploadId=")  # CompleteMultipartUpload
    proxy.fail_next(1, status=503, method="PUT", path_contains="manifest.json")

    result = setup.run("backup", "now")

    assert result.returncode == 0, result.stderr
    assert proxy.injected == 7
    assert "storage request failed, retrying" in result.stderr
    [backup] = setup.backups()
    for artifact in backup["artifacts"]:  # type: ignore[attr-defined]
        assert stored_sha256(s3_bucket, artifact["key"]) == artifact["sha256"]
    verified = setup.run("backup", "verify", "latest")
    assert verified.returncode == 0, verified.stderr
    assert s3_uploads(s3_bucket) == []


def test_faults_that_outlast_the_retries_fail_the_backup_cleanly(
    tmp_path: Path, database: str, s3_bucket: StorageConfig, proxy: FaultProxy
) -> None:
    add_random_bytes(database, 1)
    setup = write_setup(tmp_path, database, through_proxy(s3_bucket, proxy.url), part_size="256KiB", max_attempts=2)
    proxy.fail_next(1000, status=503, method="PUT", path_contains=PART)

    result = setup.run("backup", "now")

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "storage 's3'" in line and "uploading part" in line and "ServiceUnavailable" in line
    assert setup.backups() == []
    assert s3_uploads(s3_bucket) == [], "the multipart upload must be aborted"
    assert s3_objects(s3_bucket) == []
