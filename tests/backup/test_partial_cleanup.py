"""Removing a failed run's objects: a cleanup cut short never leaves a listed backup whose dump is gone."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opskit import catalog
from opskit.backup import stream
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.faults.helpers import PG_ADMIN_DSN, drop_database, write_setup


@pytest.fixture
def small_database() -> Iterator[str]:
    """Yield a database with one small table on the shared server; drop it afterwards."""
    name = f"opskit_t_cleanup_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(PG_ADMIN_DSN.replace("dbname=test", f"dbname={name}"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
        yield name
    finally:
        drop_database(name)


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


def test_a_cleanup_interrupted_after_its_first_delete_leaves_no_listed_backup(
    tmp_path: Path, small_database: str, storage_config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A committed backup stands for a run whose manifest was written before a late error.
    setup = write_setup(tmp_path, small_database, storage_config)
    result = setup.run("backup", "now")
    assert result.returncode == 0, result.stderr
    storage = open_storage(storage_config)
    (manifest,) = catalog.list_backups(storage, "app")
    deleted: list[str] = []
    real_delete = storage.delete

    def delete_then_interrupt(key: str) -> None:
        real_delete(key)
        deleted.append(key)
        raise KeyboardInterrupt  # a second SIGTERM (the CLI's clean abort) cuts the cleanup short

    monkeypatch.setattr(storage, "delete", delete_then_interrupt)

    with pytest.raises(KeyboardInterrupt):
        stream.remove_partial_backup(storage, "app", manifest.id)

    assert deleted == [catalog.manifest_key("app", manifest.id)]
    assert catalog.list_backups(storage, "app") == []
    assert storage.exists(manifest.artifact("db").key)  # left unlisted, for prune's sweep
