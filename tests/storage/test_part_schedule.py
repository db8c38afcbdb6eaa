"""Part sizes of multipart uploads: growth keeps a 5 TiB object under the provider's part limit."""

from __future__ import annotations

import pytest

from opskit.storage.azure import MAX_BLOCK_SIZE, MAX_BLOCKS, AzureStorage, block_id
from opskit.storage.base import StorageConfig
from opskit.storage.cloud import GiB, MiB, PartSchedule, TiB
from opskit.storage.gcs import GCSStorage, chunk_size_for
from opskit.storage.s3 import DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Storage


@pytest.mark.parametrize("base", [5 * MiB, 8 * MiB, 16 * MiB, 64 * MiB, 512 * MiB])
def test_a_5_tib_object_fits_in_10000_s3_parts_from_any_allowed_base(base: int) -> None:
    schedule = PartSchedule(base=base)
    assert schedule.capacity() >= 5 * TiB


def test_parts_keep_the_base_size_for_the_first_900_parts() -> None:
    schedule = PartSchedule(base=16 * MiB)
    assert {schedule.size(n) for n in range(1, 901)} == {16 * MiB}
    assert schedule.size(901) == 32 * MiB
    assert schedule.size(1801) == 64 * MiB


def test_parts_never_shrink_and_never_exceed_the_s3_maximum_of_5_gib() -> None:
    schedule = PartSchedule(base=16 * MiB)
    sizes = [schedule.size(n) for n in range(1, 10_001)]
    assert sizes == sorted(sizes)
    assert max(sizes) <= 5 * GiB


def test_an_azure_blob_of_5_tib_fits_in_50000_blocks_of_at_most_4000_mib() -> None:
    storage = AzureStorage(StorageConfig(name="az", url="az://c/p", options={}))
    assert storage.schedule.capacity() >= 5 * TiB
    assert max(storage.schedule.size(n) for n in range(1, MAX_BLOCKS + 1)) <= MAX_BLOCK_SIZE


def test_s3_uses_8_mib_parts_by_default_and_fits_5_tib() -> None:
    storage = S3Storage(StorageConfig(name="s3", url="s3://b/p"))
    assert storage.schedule.base == DEFAULT_PART_SIZE == 8 * MiB
    assert storage.schedule.capacity() >= 5 * TiB


def test_s3_raises_a_part_size_below_5_mib_to_the_aws_minimum() -> None:
    storage = S3Storage(StorageConfig(name="s3", url="s3://b/p", part_size=1 * MiB))
    assert storage.schedule.base == MIN_PART_SIZE


def test_s3_honours_a_small_part_size_with_a_custom_endpoint() -> None:
    config = StorageConfig(
        name="s3", url="s3://b/p", part_size=256 * 1024, options={"endpoint_url": "http://127.0.0.1:9000"}
    )
    assert S3Storage(config).schedule.base == 256 * 1024


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (None, 16 * MiB),
        (1, 256 * 1024),
        (256 * 1024, 256 * 1024),
        (300 * 1024, 512 * 1024),
        (10 * MiB, 10 * MiB),
    ],
)
def test_gcs_chunks_are_rounded_up_to_a_multiple_of_256_kib(configured: int | None, expected: int) -> None:
    assert chunk_size_for(configured) == expected


def test_gcs_chunks_do_not_grow() -> None:
    storage = GCSStorage(StorageConfig(name="gs", url="gs://b/p", part_size=1 * MiB))
    assert storage.schedule.size(1) == storage.schedule.size(100_000) == 1 * MiB


def test_azure_block_ids_have_one_length_and_are_distinct() -> None:
    ids = [block_id(n) for n in (1, 2, 10, 999, 50_000)]
    assert len({len(i) for i in ids}) == 1
    assert len(set(ids)) == len(ids)
