"""Manifests and finding backups in a storage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opskit.catalog import (
    Artifact,
    Manifest,
    TableFacts,
    find_backup,
    list_backups,
    manifest_key,
    new_backup_id,
    write_manifest,
)
from opskit.core.errors import ConfigError, ManifestError
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.registry import open_storage

T0 = datetime(2026, 11, 26, 17, 42, tzinfo=UTC)


def manifest(moment: datetime, target: str = "app") -> Manifest:
    backup_id = new_backup_id(moment)
    return Manifest(
        id=backup_id,
        target=target,
        opskit_version="test",
        snapshot_time=moment,
        started_at=moment,
        finished_at=moment + timedelta(seconds=30),
        server={"database": "app", "major": 15},
        tools={},
        artifacts=(Artifact("db", f"{target}/{backup_id}/db.dump.zst", 10, "a" * 64, 20, "b" * 64),),
        tables=(TableFacts("public", "orders", 5),),
        labels=("nightly",),
    )


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage(StorageConfig(name="disk", url=f"file://{tmp_path}"))


def test_backup_ids_start_with_the_snapshot_time_in_utc() -> None:
    assert new_backup_id(T0).startswith("20261126T174200Z-")


def test_a_manifest_survives_a_json_round_trip() -> None:
    original = manifest(T0)

    assert Manifest.from_json(original.to_json()) == original


@pytest.mark.parametrize(
    "payload",
    [b"", b"[]", b'{"format_version": 2}', b'{"format_version": 1}', b"\xff\xfe", b'{"format_version": 1, "id": 3}'],
)
def test_malformed_manifests_raise_manifest_errors(payload: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_json(payload)


def test_backups_list_newest_first_by_snapshot_time_not_by_name(storage: Storage) -> None:
    older, newer = manifest(T0), manifest(T0 + timedelta(hours=1))
    for m in (newer, older):
        write_manifest(storage, m)

    assert [m.id for m in list_backups(storage, "app")] == [newer.id, older.id]


def test_an_artifact_without_a_manifest_is_not_a_backup(storage: Storage) -> None:
    with storage.writer("app/20261126T174200Z-abcd/db.dump.zst") as out:
        out.write(b"half a dump")

    assert list_backups(storage) == []


def test_an_unreadable_manifest_is_collected_not_silently_dropped(storage: Storage) -> None:
    with storage.writer(manifest_key("app", "20261126T174200Z-abcd")) as out:
        out.write(b"{not json")
    bad: list = []

    assert list_backups(storage, "app", bad=bad) == []
    assert bad[0].backup_id == "20261126T174200Z-abcd"


def test_a_backup_is_found_by_id_prefix_or_latest(storage: Storage) -> None:
    first, second = manifest(T0), manifest(T0 + timedelta(days=1))
    for m in (first, second):
        write_manifest(storage, m)

    assert find_backup(storage, "app", "latest").id == second.id
    assert find_backup(storage, "app", first.id).id == first.id
    assert find_backup(storage, "app", "20261127").id == second.id
    with pytest.raises(ConfigError, match="matches 2 backups"):
        find_backup(storage, "app", "2026112")
    with pytest.raises(ConfigError, match="no backup"):
        find_backup(storage, "app", "1999")
