"""Base backups (``opskit backup now --kind base``) of a real archiving cluster, through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import zstandard

from opskit.catalog import Manifest
from opskit.wal import layout
from tests.wal.cluster import ArchivingCluster, give_to_postgres


def take_base_backup(cluster: ArchivingCluster) -> dict[str, object]:
    result = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert result.returncode == 0, result.stderr
    manifest: dict[str, object] = json.loads(result.stdout)
    return manifest


def test_a_base_backup_records_its_timeline_lsns_wal_range_and_postgres_own_backup_manifest(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        system_identifier = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]

    doc = take_base_backup(cluster)

    assert doc["kind"] == "base"
    base = doc["base"]
    assert isinstance(base, dict)
    assert base["timeline"] == 1
    assert layout.parse_lsn(base["start_lsn"]) <= layout.parse_lsn(base["stop_lsn"])
    assert base["wal_start"] <= base["wal_stop"]
    assert base["system_identifier"] == system_identifier
    backup_dir = cluster.archive_dir / "app" / str(doc["id"])
    assert sorted(p.name for p in backup_dir.iterdir()) == ["backup_manifest.zst", "base.tar.zst", "manifest.json"]
    kept = json.loads(
        zstandard.ZstdDecompressor().decompressobj().decompress((backup_dir / "backup_manifest.zst").read_bytes())
    )
    assert kept["PostgreSQL-Backup-Manifest-Version"] in (1, 2)
    assert kept["WAL-Ranges"][0]["Start-LSN"] == base["start_lsn"]
    # -X none: the server returned only once the backup's last segment was archived.
    assert (cluster.archive_dir / "app" / "wal" / f"{base['wal_stop']}.zst").exists()


def test_backup_list_shows_the_kind_and_verify_passes_for_both_kinds(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 10) AS id")
    base = take_base_backup(cluster)
    logical = cluster.opskit("backup", "now", "--json")
    assert logical.returncode == 0, logical.stderr

    listing = cluster.opskit("backup", "list")
    verify_base = cluster.opskit("backup", "verify", str(base["id"]))
    verify_logical = cluster.opskit("backup", "verify", json.loads(logical.stdout)["id"])

    rows = {line.split()[0]: line.split()[2] for line in listing.stdout.splitlines()[1:] if line.strip()}
    assert rows[str(base["id"])] == "base"
    assert rows[json.loads(logical.stdout)["id"]] == "logical"
    assert verify_base.returncode == 0, verify_base.stdout + verify_base.stderr
    assert verify_logical.returncode == 0, verify_logical.stdout + verify_logical.stderr


def test_a_logical_restore_of_a_base_backup_is_refused_with_one_line_naming_pitr(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    base = take_base_backup(cluster)

    result = cluster.opskit("restore", str(base["id"]))

    assert result.returncode == 2
    assert f"backup {base['id']} is a base backup, not a logical one" in result.stderr
    assert "--pitr" in result.stderr


def test_a_cluster_with_another_tablespace_is_refused_and_nothing_is_stored(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    location = cluster.root / "tablespace"
    location.mkdir()
    give_to_postgres(location)
    with cluster.connect() as conn:
        conn.execute(f"CREATE TABLESPACE extra LOCATION '{location}'")

    result = cluster.opskit("backup", "now", "--kind", "base")

    assert result.returncode == 2
    assert "has tablespaces besides pg_default (extra)" in result.stderr
    assert "base backups of several tablespaces are not supported yet" in result.stderr
    assert "pg_basebackup -Ft -D <dir>" in result.stderr and "SET TABLESPACE pg_default" in result.stderr
    assert not [p for p in (cluster.archive_dir / "app").glob("*/manifest.json")]


def test_a_manifest_written_before_base_backups_existed_reads_as_logical(tmp_path: Path) -> None:
    old = {
        "format_version": 1,
        "id": "20261126T174200Z-3fa1",
        "target": "app",
        "opskit_version": "0.1",
        "snapshot_time": "2026-11-26T17:42:00Z",
        "started_at": "2026-11-26T17:42:00Z",
        "finished_at": "2026-11-26T17:43:00Z",
        "server": {},
        "tools": {},
        "artifacts": [
            {
                "name": "db",
                "key": "app/20261126T174200Z-3fa1/db.dump.zst",
                "size": 1,
                "sha256": "x",
                "plain_size": 1,
                "plain_sha256": "y",
            }
        ],
    }

    manifest = Manifest.from_dict(old)

    assert manifest.kind == "logical"
    assert manifest.base == {}
