"""The PITR window and the WAL RPO in ``opskit status`` and ``opskit metrics``, from a real archiving cluster."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime

from tests.wal.cluster import ArchivingCluster


def test_status_and_metrics_show_the_pitr_window_and_the_newest_archived_wal(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    switched = cluster.switch_wal()
    cluster.wait_archived(switched)

    status = cluster.opskit("status", "--json")
    metrics_file = cluster.root / "opskit.prom"
    metrics = cluster.opskit("metrics", "--textfile", str(metrics_file))

    pitr = json.loads(status.stdout)["targets"][0]["pitr"]
    assert pitr["base_backups"] == 1
    assert pitr["oldest_restorable"] == manifest["snapshot_time"]
    assert pitr["newest_wal"] == switched
    assert 0 <= pitr["rpo_seconds"] < 120
    assert metrics.returncode == 0, metrics.stderr
    found = re.search(
        r'^opskit_wal_last_archived_timestamp_seconds\{target="app"\} (\S+)$', metrics_file.read_text(), re.M
    )
    assert found is not None
    archived_at = datetime.fromisoformat(pitr["newest_wal_archived_at"].replace("Z", "+00:00"))
    assert abs(float(found.group(1)) - archived_at.timestamp()) < 1
