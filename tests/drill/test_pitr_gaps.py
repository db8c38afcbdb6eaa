"""``opskit drill restore --pitr`` fails on an archive that cannot take recovery to the moment drilled.

The archive is a damaged copy of tests/wal/cluster.py's session-wide ``archived_history``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.drill.test_pitr_drill import drill
from tests.wal.cluster import ArchivedHistory, ArchivingCluster


def test_a_drill_to_a_time_past_a_gap_fails_with_exit_5_and_the_report_names_the_missing_segment(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    middle = archived_history.segments[1]
    (history_copy.archive_dir / "app" / "wal" / f"{middle}.zst").unlink()

    result = drill(history_copy, "--to-time", archived_history.quiet_moment.isoformat(), "--json")

    assert result.returncode == 5, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["verdict"] == "fail"
    failed = [c for c in report["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["recovery completes"], failed
    assert f"segment {middle} is missing from the archive" in failed[0]["actual"]
    assert not any("recovered to its end" in w for w in report["warnings"])
    # It stopped before the server took connections (no port): the scratch directory is gone all the same.
    assert report["cleanup"]["action"] == "removed"
    assert not Path(report["cleanup"]["pgdata"]).parent.exists()
