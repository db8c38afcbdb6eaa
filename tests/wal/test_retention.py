"""WAL retention: prune deletes archived WAL only when no kept base backup needs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opskit.wal import layout
from opskit.wal.retention import plan_wal_deletes
from tests.wal.cluster import ArchivingCluster


def _give_app_retention(cluster: ArchivingCluster, policy: str, rules: str, storages: str = '"local"') -> None:
    """Append ``[retention.POLICY]`` (``rules``) to the cluster's config; target app keeps by it, on ``storages``."""
    text = cluster.config_path.read_text().replace(
        'storages = ["local"]\n', f'storages = [{storages}]\nretention = "{policy}"\n', 1
    )
    cluster.config_path.write_text(text + f"\n[retention.{policy}]\n{rules}")


def test_with_no_base_backup_kept_no_wal_is_deleted() -> None:
    keys = ["app/wal/000000010000000000000001.zst", "app/wal/000000010000000000000001.sha256"]

    assert plan_wal_deletes(keys, []) == []


def test_prune_keeps_the_wal_of_the_kept_base_backup_and_deletes_only_what_is_older(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    _give_app_retention(cluster, "one", "keep_last = 1\n")
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


def test_prune_keeps_keep_last_base_backups_whatever_the_number_of_newer_dumps(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    _give_app_retention(cluster, "two", "keep_last = 2\nmin_keep = 1\n")
    bases = []
    for _ in range(3):
        bases.append(json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)["id"])
        cluster.wait_archived(cluster.switch_wal())
    dumps = [json.loads(cluster.opskit("backup", "now", "--json").stdout)["id"] for _ in range(2)]

    dry = cluster.opskit("prune", "--dry-run")
    pruned = cluster.opskit("prune", "--json")
    listed = cluster.opskit("backup", "list", "--json")
    verify = cluster.opskit("wal", "verify")

    assert dry.returncode == 0, dry.stderr
    assert f"{bases[0]}  base     " in dry.stdout and "DELETE" in dry.stdout
    assert "by kind: base kept 2, would delete 1; logical kept 2, would delete 0" in dry.stdout
    assert pruned.returncode == 0, pruned.stderr
    result = json.loads(pruned.stdout)["results"][0]
    assert result["deleted"] == [bases[0]]
    assert {(d["id"], d["kind"], d["action"]) for d in result["plan"]["decisions"]} == {
        (bases[0], "base", "delete"),
        (bases[1], "base", "keep"),
        (bases[2], "base", "keep"),
        (dumps[0], "logical", "keep"),
        (dumps[1], "logical", "keep"),
    }
    assert sorted(b["id"] for b in json.loads(listed.stdout)) == sorted([*bases[1:], *dumps])
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_copy_after_each_base_backup_carries_its_wal_and_prune_trims_the_wal_of_each_storage(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster = archiving_cluster()
    offsite = tmp_path / "off"
    _give_app_retention(cluster, "one", "keep_last = 1\n", storages='"local", "off"')
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(f'\n[storages.off]\nurl = "file://{offsite}"\noffsite = true\n')
    old = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    new = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    status = json.loads(cluster.opskit("status", "--json").stdout)["targets"][0]
    cutoff = layout.segment_number(new["base"]["wal_start"])[1]

    pruned = cluster.opskit("prune", "--json")
    verify_off = cluster.opskit("wal", "verify", "--storage", "off")

    assert {s["name"]: s["base_backups_without_wal"] for s in status["storages"]} == {"local": [], "off": []}
    assert status["three_two_one"]["copies"] == 3
    assert pruned.returncode == 0, pruned.stderr
    results = {r["storage"]: r for r in json.loads(pruned.stdout)["results"]}
    assert {name: r["deleted"] for name, r in results.items()} == {"local": [old["id"]], "off": [old["id"]]}
    for name, root in (("local", cluster.archive_dir), ("off", offsite)):
        assert results[name]["wal_deleted"], name
        left = [p.name for p in (root / "app" / "wal").iterdir() if layout.is_segment_name(p.name[:24])]
        assert min(layout.segment_number(n[:24])[1] for n in left) == cutoff, name
    assert verify_off.returncode == 0, verify_off.stdout + verify_off.stderr


def _two_base_backups_on_two_storages(
    cluster: ArchivingCluster, offsite: Path, verify_first: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keep one backup (``keep_last = 1``) on ``local`` and ``off``; take two base backups, each copied with its WAL.

    With ``verify_first`` the first is verified (on the primary, where verify reads) before the
    second is taken. Returns both backups' JSON reports, oldest first.
    """
    _give_app_retention(cluster, "one", "keep_last = 1\n", storages='"local", "off"')
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(f'\n[storages.off]\nurl = "file://{offsite}"\noffsite = true\n')
    old = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    if verify_first:
        verified = cluster.opskit("backup", "verify", old["id"])
        assert verified.returncode == 0, verified.stdout + verified.stderr
    new = json.loads(cluster.opskit("backup", "now", "--kind", "base", "--json").stdout)
    cluster.wait_archived(cluster.switch_wal())
    return old, new


def _oldest_segment(root: Path) -> int:
    """Return the lowest segment number of the WAL objects under ``root``'s ``app/wal/``."""
    names = [p.name for p in (root / "app" / "wal").iterdir() if layout.is_segment_name(p.name[:24])]
    return min(layout.segment_number(n[:24])[1] for n in names)


def test_prune_copy_prune_keep_the_base_backup_verified_on_the_primary_and_its_wal_on_the_secondary(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster = archiving_cluster()
    offsite = tmp_path / "off"
    old, new = _two_base_backups_on_two_storages(cluster, offsite, verify_first=True)
    wal_start = layout.segment_number(old["base"]["wal_start"])[1]

    pruned = cluster.opskit("prune", "--json")
    copied = cluster.opskit("copy", "--json")
    again = cluster.opskit("prune", "--json")
    verify_off = cluster.opskit("wal", "verify", "--storage", "off")

    assert pruned.returncode == 0, pruned.stderr
    first = {r["storage"]: r for r in json.loads(pruned.stdout)["results"]}
    assert first["off"]["deleted"] == [] and first["off"]["wal_deleted"] == []
    assert first["local"]["deleted"] == []  # only the WAL from before the first base backup goes
    assert copied.returncode == 0, copied.stderr
    copy_report = json.loads(copied.stdout)
    assert copy_report["copied"] == [] and copy_report["not_retained"] == []
    assert all(w["copied"] == [] for w in copy_report["wal"])
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["results"]
    assert [(r["deleted"], r["wal_deleted"]) for r in second] == [([], []), ([], [])]
    assert _oldest_segment(offsite) == wal_start == _oldest_segment(cluster.archive_dir)
    assert sorted(p.name for p in offsite.joinpath("app").iterdir() if (p / "manifest.json").exists()) == sorted(
        [old["id"], new["id"]]
    )
    assert verify_off.returncode == 0, verify_off.stdout + verify_off.stderr


def test_a_copy_brings_back_neither_a_base_backup_the_secondarys_prune_deleted_nor_its_wal(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster = archiving_cluster()
    offsite = tmp_path / "off"
    old, new = _two_base_backups_on_two_storages(cluster, offsite)
    cutoff = layout.segment_number(new["base"]["wal_start"])[1]

    pruned = cluster.opskit("prune", "--storage", "off", "--json")  # the primary is pruned later (another job)
    dry = cluster.opskit("copy", "--dry-run", "--json")
    copied = cluster.opskit("copy", "--json")
    again = cluster.opskit("prune", "--storage", "off", "--json")
    text = cluster.opskit("copy", "--dry-run")

    assert pruned.returncode == 0, pruned.stderr
    (result,) = json.loads(pruned.stdout)["results"]
    assert result["deleted"] == [old["id"]] and result["wal_deleted"]
    left_out = [{"target": "app", "storage": "off", "backup": old["id"]}]
    for run in (dry, copied):
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["copied"] == [] and report["not_retained"] == left_out
        assert all(w["copied"] == [] for w in report["wal"])
    assert again.returncode == 0, again.stderr
    (result,) = json.loads(again.stdout)["results"]
    assert result["deleted"] == [] and result["wal_deleted"] == []
    assert _oldest_segment(offsite) == cutoff
    assert not (offsite / "app" / old["id"]).exists()
    assert (
        f"left out backup {old['id']} of target 'app': the retention policy would delete it from 'off'" in text.stdout
    )
    assert "0 would copy, 1 already present, 1 left out by retention, 0 failed" in text.stdout
