"""The storage contract: one suite, run unchanged against every backend on a real server.

``any_storage`` (tests/servers.py) yields a ready StorageConfig for local disk, S3 (moto),
GCS (gcp-storage-emulator) and Azure (Azurite) in turn. Part sizes are set small so that
a few hundred KiB cross several part boundaries.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from opskit.core.errors import ObjectNotFound, StorageError, UnreachableError
from opskit.storage.base import ServerSideCopy, Storage, StorageConfig
from opskit.storage.registry import open_storage
from tests.faultproxy import FaultProxy
from tests.servers import (
    SMALL_PART_SIZE,
    bad_credentials,
    missing_container,
    read_only_credentials,
    through_proxy,
    upstream_of,
)


def small_parts(config: StorageConfig) -> Storage:
    """Open ``config`` with the smallest part size every test server accepts, and a fast backoff."""
    storage = open_storage(replace(config, part_size=SMALL_PART_SIZE))
    retry = getattr(storage, "retry", None)
    if retry is not None:
        storage.retry = replace(retry, initial_wait=0.01, max_wait=0.05)  # type: ignore[attr-defined]
    return storage


def write_in_pieces(storage: Storage, key: str, data: bytes, piece: int = 64 * 1024) -> None:
    """Write ``data`` to ``key`` in pieces, as a pipeline stage would."""
    with storage.writer(key) as out:
        for start in range(0, len(data), piece):
            out.write(data[start : start + piece])


def read_all(storage: Storage, key: str, piece: int = 100_000) -> bytes:
    """Read ``key`` back in pieces, as a pipeline stage would."""
    chunks = []
    with storage.reader(key) as inp:
        while True:
            chunk = inp.read(piece)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def keys(storage: Storage, prefix: str = "") -> set[str]:
    """Return the set of keys listed under ``prefix``."""
    return {info.key for info in storage.list(prefix)}


def test_a_written_object_is_committed_and_reads_back_identically(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    data = os.urandom(1000)
    write_in_pieces(storage, "t1/20261126T000000Z-ab/db.dump.zst", data)
    assert storage.exists("t1/20261126T000000Z-ab/db.dump.zst")
    assert read_all(storage, "t1/20261126T000000Z-ab/db.dump.zst") == data
    [info] = list(storage.list("t1/"))
    assert info.key == "t1/20261126T000000Z-ab/db.dump.zst"
    assert info.size == 1000
    assert info.modified.tzinfo is not None
    assert abs(info.modified - datetime.now(UTC)) < timedelta(minutes=10)


def test_an_empty_object_can_be_written_and_read(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    with storage.writer("empty"):
        pass
    assert storage.exists("empty")
    assert read_all(storage, "empty") == b""


@pytest.mark.parametrize("size", [100, 3 * SMALL_PART_SIZE + 12345])
def test_an_exception_inside_the_writer_leaves_no_object_visible(any_storage: StorageConfig, size: int) -> None:
    storage = small_parts(any_storage)
    with pytest.raises(RuntimeError, match="pg_dump died"), storage.writer("t1/partial/db.dump.zst") as out:
        out.write(os.urandom(size))
        raise RuntimeError("pg_dump died")
    assert not storage.exists("t1/partial/db.dump.zst")
    assert keys(storage) == set()


@pytest.mark.parametrize("size", [4 * SMALL_PART_SIZE + 777, 2 * SMALL_PART_SIZE], ids=["short-last", "exact"])
def test_an_object_of_several_parts_streams_back_in_order(any_storage: StorageConfig, size: int) -> None:
    storage = small_parts(any_storage)
    data = os.urandom(size)  # several full parts, and a short last one or none
    write_in_pieces(storage, "big.bin", data, piece=100_003)
    with storage.reader("big.bin") as inp:
        first = inp.read(10)
        rest = inp.read()
    assert first + rest == data
    [info] = list(storage.list("big"))
    assert info.size == len(data)


def test_an_object_of_exactly_one_part_is_stored_whole(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    data = os.urandom(SMALL_PART_SIZE)
    write_in_pieces(storage, "one-part.bin", data, piece=SMALL_PART_SIZE)
    assert read_all(storage, "one-part.bin") == data


def test_list_returns_only_keys_under_the_prefix(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    for key in (
        "app/1/manifest.json",
        "app/1/db.dump.zst",
        "app/2/manifest.json",
        "app2/1/manifest.json",
        "x",
    ):
        write_in_pieces(storage, key, key.encode())
    assert keys(storage, "app/") == {"app/1/manifest.json", "app/1/db.dump.zst", "app/2/manifest.json"}
    assert keys(storage, "app/1/") == {"app/1/manifest.json", "app/1/db.dump.zst"}
    assert keys(storage, "app") == keys(storage, "app/") | {"app2/1/manifest.json"}
    assert keys(storage, "nothing/") == set()
    assert len(keys(storage)) == 5


def test_objects_outside_the_storage_prefix_are_not_listed(any_storage: StorageConfig) -> None:
    inner = small_parts(any_storage)
    scheme, _, rest = any_storage.url.partition("://")
    sibling = small_parts(replace(any_storage, url=f"{scheme}://{rest.rstrip('/')}2"))
    write_in_pieces(sibling, "app/1/manifest.json", b"{}")
    write_in_pieces(inner, "app/1/manifest.json", b"{}")
    assert keys(inner) == {"app/1/manifest.json"}
    assert keys(sibling) == {"app/1/manifest.json"}


def test_list_paginates_past_one_thousand_objects(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    names = [f"many/{i:05d}" for i in range(1001)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda key: write_in_pieces(storage, key, b"x"), names))
    listed = [info.key for info in storage.list("many/")]
    assert len(listed) == 1001
    assert set(listed) == set(names)


def test_delete_removes_the_object_and_a_missing_key_is_fine(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    write_in_pieces(storage, "app/1/db.dump.zst", b"data")
    storage.delete("app/1/db.dump.zst")
    assert not storage.exists("app/1/db.dump.zst")
    assert keys(storage) == set()
    storage.delete("app/1/db.dump.zst")
    storage.delete("never/existed")


def test_reading_a_missing_object_raises_object_not_found(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    with pytest.raises(ObjectNotFound, match="no object 'missing/key'"), storage.reader("missing/key"):
        pass
    assert not storage.exists("missing/key")


def test_an_invalid_key_is_refused(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    with pytest.raises(StorageError, match="invalid object key"):
        storage.exists("../escape")


def test_check_writable_passes_on_a_good_storage_and_leaves_nothing(any_storage: StorageConfig) -> None:
    storage = small_parts(any_storage)
    storage.check_writable()
    assert keys(storage) == set()


def test_check_writable_names_a_missing_bucket_with_exit_3(any_storage: StorageConfig) -> None:
    config = missing_container(any_storage)
    storage = small_parts(config)
    with pytest.raises(UnreachableError) as caught:
        storage.check_writable()
    assert caught.value.exit_code == 3
    assert f"storage '{config.name}'" in caught.value.message
    if config.kind != "file":
        bucket = config.url.partition("://")[2].split("/")[0]
        assert f"'{bucket}' does not exist" in caught.value.message
        assert "never creates" in (caught.value.hint or "")


def test_check_writable_names_bad_credentials_with_exit_3(
    any_storage: StorageConfig, request: pytest.FixtureRequest
) -> None:
    config = bad_credentials(any_storage, request)
    if config is None:
        pytest.skip(f"a {any_storage.kind} storage has no credentials to get wrong")
    storage = small_parts(config)
    with pytest.raises(UnreachableError) as caught:
        storage.check_writable()
    assert caught.value.exit_code == 3
    assert f"storage '{config.name}'" in caught.value.message
    assert "credentials" in caught.value.message


def test_check_writable_names_a_read_only_credential_with_exit_3(
    any_storage: StorageConfig, request: pytest.FixtureRequest
) -> None:
    config = read_only_credentials(any_storage, request)
    if config is None:
        pytest.skip(f"the {any_storage.kind} test server cannot make a read-only credential")
    storage = small_parts(config)
    assert list(storage.list()) == []  # reading works ...
    with pytest.raises(UnreachableError) as caught:
        storage.check_writable()  # ... writing does not
    assert caught.value.exit_code == 3
    assert f"storage '{config.name}'" in caught.value.message
    assert "read-only" in caught.value.message


def test_a_transient_error_is_retried_and_logged(any_storage: StorageConfig) -> None:
    if any_storage.kind == "file":
        pytest.skip("local disk has no transient network errors")
    with FaultProxy(upstream_of(any_storage)) as proxy:
        storage = small_parts(through_proxy(any_storage, proxy.url))
        data = os.urandom(3 * SMALL_PART_SIZE + 5)
        proxy.fail_next(2, status=503)
        with capture_logs() as logs:
            write_in_pieces(storage, "retried.bin", data)
            proxy.fail_next(1, status=503, method="GET")
            assert read_all(storage, "retried.bin") == data
        assert proxy.injected == 3
    retries = [entry for entry in logs if entry["log_level"] == "warning" and entry.get("attempt")]
    assert len(retries) >= 3
    assert all(entry["storage"] == any_storage.name for entry in retries)


def test_a_dropped_connection_is_retried(any_storage: StorageConfig) -> None:
    if any_storage.kind == "file":
        pytest.skip("local disk has no connections to drop")
    with FaultProxy(upstream_of(any_storage)) as proxy:
        storage = small_parts(through_proxy(any_storage, proxy.url))
        data = os.urandom(2 * SMALL_PART_SIZE + 5)
        proxy.fail_next(1, mode="reset", method="PUT")
        write_in_pieces(storage, "reset.bin", data)
        assert proxy.injected == 1
        assert read_all(storage, "reset.bin") == data


def test_a_persistent_error_gives_up_after_max_attempts(any_storage: StorageConfig) -> None:
    if any_storage.kind == "file":
        pytest.skip("local disk has no transient network errors")
    with FaultProxy(upstream_of(any_storage)) as proxy:
        config = through_proxy(any_storage, proxy.url)
        storage = small_parts(replace(config, options={**config.options, "max_attempts": 3}))
        proxy.fail_next(100, status=503)
        with pytest.raises(StorageError) as caught:
            write_in_pieces(storage, "never.bin", b"x")
        assert proxy.injected == 3
        proxy.clear()
        assert not storage.exists("never.bin")
    assert caught.value.exit_code == 4
    assert f"storage '{any_storage.name}'" in caught.value.message


def test_server_side_copy_between_two_storages_of_one_provider(any_storage: StorageConfig) -> None:
    source = small_parts(any_storage)
    if not isinstance(source, ServerSideCopy):
        pytest.skip(f"a {any_storage.kind} storage copies by streaming")
    scheme, _, rest = any_storage.url.partition("://")
    target = small_parts(replace(any_storage, url=f"{scheme}://{rest.rstrip('/')}-copy"))
    data = os.urandom(2 * SMALL_PART_SIZE + 3)
    write_in_pieces(source, "app/1/db.dump.zst", data)
    assert isinstance(target, ServerSideCopy)
    assert target.copy_from(source, "app/1/db.dump.zst") is True
    assert read_all(target, "app/1/db.dump.zst") == data
    with pytest.raises(ObjectNotFound):
        target.copy_from(source, "app/2/missing")


def skip_without_preconditions(config: StorageConfig) -> None:
    """Skip on the GCS emulator: it ignores ifGenerationMatch (real GCS honours it with a 412)."""
    if config.kind == "gs":
        pytest.skip("gcp-storage-emulator ignores ifGenerationMatch preconditions")


def test_create_stores_an_object_only_when_the_key_is_free(any_storage: StorageConfig) -> None:
    skip_without_preconditions(any_storage)
    storage = small_parts(any_storage)
    assert storage.create("app/locks/one.json", b"first") is True
    assert storage.create("app/locks/one.json", b"second") is False
    assert read_all(storage, "app/locks/one.json") == b"first"
    assert keys(storage, "app/") == {"app/locks/one.json"}


def test_of_many_concurrent_creates_of_one_key_exactly_one_wins(any_storage: StorageConfig) -> None:
    skip_without_preconditions(any_storage)
    storage = small_parts(any_storage)
    with ThreadPoolExecutor(max_workers=8) as pool:
        won = list(pool.map(lambda n: storage.create("race.json", f"writer {n}".encode()), range(8)))
    assert won.count(True) == 1
    assert read_all(storage, "race.json") == f"writer {won.index(True)}".encode()
