"""Manifests and finding backups in a storage."""

from __future__ import annotations

import re
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


def test_latest_skips_a_future_dated_backup_and_an_explicit_id_still_finds_it(storage: Storage) -> None:
    real, ahead = manifest(T0), manifest(T0 + timedelta(days=365))
    for m in (real, ahead):
        write_manifest(storage, m)

    assert find_backup(storage, "app", "latest", now=T0 + timedelta(hours=1)).id == real.id
    assert find_backup(storage, "app", ahead.id, now=T0).id == ahead.id


def test_latest_with_only_future_dated_backups_says_so(storage: Storage) -> None:
    write_manifest(storage, manifest(T0 + timedelta(days=365)))

    with pytest.raises(ConfigError, match="only 1 future-dated"):
        find_backup(storage, "app", "latest", now=T0)


def _valid_dict() -> dict[str, object]:
    data = manifest(T0).to_dict()
    data["tools"] = {"pg_dump": {"version": "15.4", "major": 15}}
    return data


def _artifacts(data: dict[str, object]) -> list[dict[str, object]]:
    return data["artifacts"]  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(artifacts=[]), "'artifacts' has no 'db' artifact"),
        (lambda d: _artifacts(d)[0].update(key="app/20200101T000000Z-0000/db.dump.zst"), "'artifacts.db.key'"),
        (lambda d: _artifacts(d)[0].update(key="other/x/db.dump.zst"), "'artifacts.db.key'"),
        (
            lambda d: _artifacts(d)[0].update(key=str(_artifacts(d)[0]["key"]).replace("db.dump.zst", "manifest.json")),
            "'artifacts.db.key'",
        ),
        (lambda d: _artifacts(d)[0].update(size=-1), "'artifacts.db.size' is negative"),
        (lambda d: _artifacts(d)[0].update(plain_size=-5), "'artifacts.db.plain_size' is negative"),
        (lambda d: _artifacts(d).append(dict(_artifacts(d)[0])), "names an artifact twice"),
        (lambda d: d.update(tools={"pg_dump": "15"}), "'tools.pg_dump' is not an object"),
        (lambda d: d.update(tools={"pg_dump": {"major": "15"}}), "'tools.pg_dump.major'"),
        (lambda d: d.update(tools={"pg_dumpall": {"major": True}}), "'tools.pg_dumpall.major'"),
        (lambda d: d.update(server={"major": "15"}), "'server.major' is not an integer"),
    ],
    ids=[
        "no db",
        "key in another backup",
        "key in another target",
        "key is the manifest",
        "negative size",
        "negative plain size",
        "artifact twice",
        "pg_dump a string",
        "major a string",
        "major a bool",
        "server major a string",
    ],
)
def test_a_manifest_that_lies_is_a_manifest_error_naming_the_field(change: object, field: str) -> None:
    data = _valid_dict()
    change(data)  # type: ignore[operator]

    with pytest.raises(ManifestError, match=re.escape(field)):
        Manifest.from_dict(data)


def test_a_well_formed_manifest_with_tool_versions_parses() -> None:
    assert Manifest.from_dict(_valid_dict()).tools["pg_dump"]["major"] == 15
