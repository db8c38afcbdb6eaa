"""S3 on a custom endpoint (moto) against a bucket whose Object Lock *default retention* keeps every object.

Such a bucket refuses every write without a Content-MD5 or checksum header
(MissingUploadObjectWithObjectLockHeaders), and opskit switches boto3's checksums off for custom
endpoints (older MinIO and Ceph releases reject them) unless ``immutable`` is set. A write refused
so now switches the storage's checksums on and is sent again; a store that refuses it even then
gets one line naming the cause and the fix, exit 3. The writability probe, itself
retained there, is hidden instead of failing the check as "access denied".
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from opskit.cli import main
from opskit.core.errors import StorageError
from opskit.storage.base import ObjectLocks, StorageConfig
from opskit.storage.registry import open_storage
from opskit.storage.s3 import S3Storage
from tests.databases import dsn_for, run_sql
from tests.servers import S3_REGION, SMALL_PART_SIZE, s3_client, unique_name


def default_retention_bucket(s3_bucket: StorageConfig, **options: Any) -> StorageConfig:
    """Return a config (no ``immutable`` unless given) for a fresh moto bucket with a 1-day default retention.

    What an operator gets by enabling Object Lock with a default rule in the console and
    pointing opskit at it through MinIO or another S3-compatible endpoint.
    """
    client: Any = s3_client(str(s3_bucket.options["endpoint_url"]))
    bucket = unique_name("opskit-t-dflt")
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    client.put_object_lock_configuration(
        Bucket=bucket,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
        },
    )
    return replace(s3_bucket, name="vault", url=f"s3://{bucket}/backups", options={**s3_bucket.options, **options})


@pytest.fixture
def retention_bucket(s3_bucket: StorageConfig) -> StorageConfig:
    return default_retention_bucket(s3_bucket)


def versions(config: StorageConfig, prefix: str) -> list[str]:
    """Return the keys of the object versions (delete markers left out) under ``backups/<prefix>``."""
    bucket = config.url.removeprefix("s3://").split("/", 1)[0]
    page: Any = s3_client(str(config.options["endpoint_url"])).list_object_versions(  # type: ignore[attr-defined]
        Bucket=bucket, Prefix=f"backups/{prefix}"
    )
    return [version["Key"] for version in page.get("Versions", [])]


@pytest.mark.parametrize("size", [1024, 3 * SMALL_PART_SIZE + 17], ids=["single put", "multipart"])
def test_writes_work_on_a_default_retention_bucket_through_a_custom_endpoint_without_immutable(
    retention_bucket: StorageConfig, size: int
) -> None:
    store = open_storage(replace(retention_bucket, part_size=SMALL_PART_SIZE))

    store.check_writable()
    with store.writer("app/b1/db.dump.zst") as out:
        out.write(b"d" * size)
    assert store.create("app/locks/l1.json", b"{}")

    with store.reader("app/b1/db.dump.zst") as inp:
        assert inp.read() == b"d" * size
    assert isinstance(store, ObjectLocks)
    if size < SMALL_PART_SIZE:  # moto applies a default retention to PutObject only, not to multipart uploads
        assert store.retained_until("app/b1/db.dump.zst") is not None


def test_the_writability_probe_is_hidden_on_a_default_retention_bucket_and_the_check_passes(
    s3_bucket: StorageConfig,
) -> None:
    from opskit.storage.base import Immutability

    config = default_retention_bucket(s3_bucket, immutable=Immutability(mode="governance", days=1))
    store = open_storage(config)

    store.check_writable()  # before: "access denied to bucket" (the probe's version is retained)

    assert list(store.list("")) == []
    assert len(versions(config, ".opskit-probe-")) == 1  # retained until its date, listed by nobody


def test_a_write_the_store_refuses_even_with_a_checksum_is_one_line_naming_the_cause_and_exits_3(
    retention_bucket: StorageConfig,
) -> None:
    # What an older store that takes only Content-MD5 answers to opskit's CRC32 checksum too.
    refusal = ClientError(
        {
            "Error": {"Code": "MissingContentMD5", "Message": "Missing required header for this request: Content-Md5."},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "PutObject",
    )
    store = open_storage(retention_bucket)
    assert isinstance(store, S3Storage)

    error = store._error("creating", "app/locks/l1.json", refusal)

    assert error.exit_code == 3
    assert error.one_line() == (
        f"storage 'vault' ({retention_bucket.url}): creating 'app/locks/l1.json' failed (not retried): "
        f"bucket '{store.bucket}' requires a Content-MD5 or checksum header on every write (Object Lock "
        "default retention) and did not take opskit's CRC32 checksum (MissingContentMD5); "
        "a store with Object Lock must accept x-amz-checksum headers (older MinIO and Ceph releases take only "
        "Content-MD5, which opskit does not send): upgrade the store, or remove the bucket's default retention "
        "and set the storage's 'immutable' option"
    )


def test_backup_now_succeeds_on_a_default_retention_bucket_through_a_custom_endpoint(
    retention_bucket: StorageConfig, pg_database: str, tmp_path: Path
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.vault]\nurl = "{retention_bucket.url}"\n'
        f'endpoint_url = "{retention_bucket.options["endpoint_url"]}"\nregion = "{S3_REGION}"\n\n'
        f'[targets.app]\ndsn = "{dsn_for(pg_database)}"\nstorages = ["vault"]\n'
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n'
    )

    result = CliRunner().invoke(main, ["--config", str(config), "-q", "backup", "now"])

    assert result.exit_code == 0, result.output
    store = open_storage(retention_bucket)
    keys = {info.key for info in store.list("app/")}
    assert any(key.endswith("/manifest.json") for key in keys)
    assert not any("/locks/" in key for key in keys)  # the released lock is hidden


def test_a_request_that_is_not_retried_does_not_claim_five_attempts(s3_bucket: StorageConfig) -> None:
    missing = replace(s3_bucket, url=f"s3://{unique_name('opskit-t-none')}/backups")

    with pytest.raises(StorageError) as failed:
        list(open_storage(missing).list("app/"))

    line = failed.value.one_line()
    assert "listing 'app/' failed (not retried): bucket '" in line
    assert "attempts" not in line


def test_a_retried_failure_says_how_many_attempts_were_made() -> None:
    from opskit.storage.retry import RetryPolicy

    policy = RetryPolicy(storage="s3", max_attempts=5, is_transient=lambda exc: isinstance(exc, TimeoutError))

    assert policy.attempts_made(TimeoutError("read timed out")) == "after 5 attempts"
    assert policy.attempts_made(ValueError("NoSuchBucket")) == "(not retried)"
