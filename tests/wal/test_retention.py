"""WAL retention: prune deletes archived WAL only when no kept base backup needs it."""

from __future__ import annotations

import json
from collections.abc import Callable

from opskit.wal import layout
from opskit.wal.retention import plan_wal_deletes
from tests.wal.cluster import ArchivingCluster


def test_with_no_base_backup_kept_no_wal_is_deleted() -> None:
    keys = ["app/wal/000000010000000000000001.zst", "app/wal/000000010000000000000001.sha256"]

    assert plan_wal_deletes(keys, []) == []


def test_prune_keeps_the_wal_of_the_kept_base_backup_and_deletes_only_what_is_older(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write("\n[retention.one]\nkeep_last = 1\n")
    text = cluster.config_path.read_text().replace(
        'storages = ["local"]\n', 'storages = ["local"]\nretention = "one"\n', 1
    )
    cluster.config_path.write_text(text)
    old = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    new = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    wal = cluster.archive_dir / "app" / "wal"
    cutoff = layout.segment_number(new["base"]["wal_start"])[1]
    older = sorted(
        p.name for p in wal.iterdir() if p.name.endswith(".zst") and layout.segment_number(p.name[:24])[1] < cutoff
    )
    assert older, "the first base backup's WAL precedes the second's"

    dry = cluster.opskit("prune", "--dry-run", "--json")
    assert all((wal / name).exists() for name in older)
    pruned = cluster.opskit("prune", "--json")
    verify = cluster.opskit("wal", "verify")

    assert dry.returncode == 0, dry.stderr
    assert pruned.returncode == 0, pruned.stderr
    result = json.loads(pruned.stdout)["results"][0]
    assert result["deleted"] == [old["id"]]
    assert sorted(k.rsplit("/", 1)[-1] for k in result["wal_deleted"] if k.endswith(".zst")) == older
    assert not any((wal / name).exists() for name in older)
    assert (wal / f"{new['base']['wal_start']}.zst").exists()
    assert verify.returncode == 0, verify.stdout + verify.stderr
