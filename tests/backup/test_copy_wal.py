"""`opskit copy` carries the archived WAL a secondary's base backups need, so a copy can be recovered there."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.storage import open_storage
from opskit.storage.base import Storage, StorageConfig
from opskit.wal import layout
from tests.databases import storage_table
from tests.wal.cluster import AgeKey, ArchivingCluster


def add_offsite_storage(cluster: ArchivingCluster, table: dict[str, object]) -> None:
    """Give target ``app`` a second storage ``off`` (offsite) described by ``table``."""
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
    text = cluster.config_path.read_text().replace('storages = ["local"]\n', 'storages = ["local", "off"]\n', 1)
    cluster.config_path.write_text(text + f"\n[storages.off]\n{lines}offsite = true\n")


def wal_objects(store: Storage) -> dict[str, str]:
    """Return every object under ``app/wal/`` of ``store`` (key relative to it) -> sha256 of its stored bytes."""
    found = {}
    for info in store.list(layout.wal_prefix("app")):
        with store.reader(info.key) as inp:
            found[info.key] = hashlib.sha256(inp.read()).hexdigest()
    return found


def base_backup_and_wal(cluster: ArchivingCluster) -> dict[str, object]:
    """Take a base backup, then write and archive two more segments; return the backup's JSON report."""
    taken = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert taken.returncode == 0, taken.stderr
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    cluster.switch_wal()
    with cluster.connect() as conn:
        conn.execute("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g")
    cluster.wait_archived(cluster.switch_wal())
    report: dict[str, object] = json.loads(taken.stdout)
    return report


@pytest.fixture(params=["local_storage", "s3_bucket"])
def offsite(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


def test_copy_carries_the_wal_the_base_backup_needs_once_and_the_copy_has_no_gap(
    archiving_cluster: Callable[..., ArchivingCluster], offsite: StorageConfig
) -> None:
    cluster = archiving_cluster()
    backup = base_backup_and_wal(cluster)
    add_offsite_storage(cluster, storage_table(offsite))
    primary = open_storage(StorageConfig("local", f"file://{cluster.archive_dir}"))
    dest = open_storage(offsite)
    cutoff = layout.segment_number(str(backup["base"]["wal_start"]))[1]  # type: ignore[index]
    needed = {
        key: digest
        for key, digest in wal_objects(primary).items()
        if (name := key.rsplit("/", 1)[-1][:24]) and layout.segment_number(name)[1] >= cutoff
    }

    dry = cluster.opskit("copy", "--dry-run", "--json")
    after_dry = wal_objects(dest)
    first = cluster.opskit("copy", "--json")
    second = cluster.opskit("copy", "--json")
    verify = cluster.opskit("wal", "verify", "--storage", "off", "--json")
    status = cluster.opskit("status", "--json")

    assert first.returncode == 0, first.stderr
    assert wal_objects(dest) == needed  # the same objects, byte for byte, records included
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["ok"]
    assert dry.returncode == 0, dry.stderr
    assert after_dry == {}
    copied = json.loads(first.stdout)
    assert copied["copied"] == [{"target": "app", "storage": "off", "backup": backup["id"]}]
    (wal,) = copied["wal"]
    assert sorted(wal["copied"]) == sorted(json.loads(dry.stdout)["wal"][0]["copied"])
    assert len(wal["copied"]) >= 3 and wal["present"] == 0
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["copied"] == [] and again["skipped"] == 1
    assert again["wal"][0]["copied"] == [] and again["wal"][0]["present"] == wal["present"] + len(wal["copied"])
    off = next(s for s in json.loads(status.stdout)["targets"][0]["storages"] if s["name"] == "off")
    assert off["base_backups_without_wal"] == []


def test_status_does_not_count_a_base_backup_whose_storage_lacks_its_wal_until_copy_brings_it(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster = archiving_cluster()
    backup = base_backup_and_wal(cluster)
    add_offsite_storage(cluster, {"url": f"file://{tmp_path / 'off'}"})
    assert cluster.opskit("copy").returncode == 0
    # What an opskit copy that knew nothing of WAL left behind: the backup alone.
    for path in (tmp_path / "off" / "app" / "wal").glob("*"):
        path.unlink()

    lacking = json.loads(cluster.opskit("status", "--json").stdout)["targets"][0]
    text = cluster.opskit("status").stdout
    assert cluster.opskit("copy").returncode == 0
    complete = json.loads(cluster.opskit("status", "--json").stdout)["targets"][0]

    off = next(s for s in lacking["storages"] if s["name"] == "off")
    assert off["base_backups_without_wal"] == [{"id": backup["id"], "missing_segment": backup["base"]["wal_start"]}]  # type: ignore[index]
    assert lacking["three_two_one"]["copies"] == 2 and lacking["three_two_one"]["offsite"] == []
    assert any("'off' holds the newest backup" in w and "not counted toward 3-2-1" in w for w in lacking["warnings"])
    assert "storage off (file, offsite): 1 backups" in text and "WITHOUT the WAL they need" in text
    assert complete["three_two_one"]["copies"] == 3 and complete["three_two_one"]["offsite"] == ["off"]


def test_a_copy_refuses_a_corrupt_wal_segment_and_leaves_none_of_it_on_the_destination(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster = archiving_cluster()
    backup = base_backup_and_wal(cluster)
    add_offsite_storage(cluster, {"url": f"file://{tmp_path / 'off'}"})
    name = str(backup["base"]["wal_stop"])  # type: ignore[index]
    segment = cluster.archive_dir / "app" / "wal" / f"{name}.zst"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0x01
    segment.write_bytes(bytes(data))

    result = cluster.opskit("copy")

    assert result.returncode == 5, result.stderr  # the source is corrupt: copying again cannot help
    assert f"WAL file {name} in storage 'local'" in result.stderr and "it was not copied" in result.stderr
    assert not (tmp_path / "off" / "app" / "wal" / f"{name}.zst").exists()
    assert not (tmp_path / "off" / "app" / backup["id"] / "manifest.json").exists()  # type: ignore[operator]


def test_encrypted_wal_is_copied_as_stored_and_checked_with_the_identity(
    archiving_cluster: Callable[..., ArchivingCluster], age_key: AgeKey, tmp_path: Path
) -> None:
    cluster = archiving_cluster(age_key.encryption)
    base_backup_and_wal(cluster)
    add_offsite_storage(cluster, {"url": f"file://{tmp_path / 'off'}"})

    result = cluster.opskit("copy", "--json")
    verify = cluster.opskit("wal", "verify", "--storage", "off")

    assert result.returncode == 0, result.stderr
    copied = json.loads(result.stdout)["wal"][0]["copied"]
    assert copied and all((tmp_path / "off" / "app" / "wal" / f"{n}.zst.age").exists() for n in copied)
    assert verify.returncode == 0, verify.stdout + verify.stderr
