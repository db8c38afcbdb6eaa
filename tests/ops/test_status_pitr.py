"""``opskit status`` shows the PITR window of a real archive: never an end before its start.

Right after the first base backup, the newest WAL in the archive is the backup's own last
segment, stored before the backup's consistent point was recorded: there is no window until
WAL written after it is stored. A throwaway cluster archiving with ``opskit wal push``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime

from tests.wal.cluster import ArchivingCluster


def window_line(text: str) -> str:
    """Return the ``PITR window:`` line of status's text output."""
    return next(line for line in text.splitlines() if "PITR window:" in line)


def instants(line: str) -> list[datetime]:
    """Return the ISO instants of a line, in order."""
    found = re.findall(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line)
    return [datetime.fromisoformat(text.replace("Z", "+00:00")) for text in found]


def test_status_shows_no_window_but_the_backup_waiting_for_wal_right_after_the_first_base_backup(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]

    as_json = cluster.opskit("status", "--json")
    text = cluster.opskit("status")

    assert as_json.returncode == 0, as_json.stderr
    (target,) = json.loads(as_json.stdout)["targets"]
    pitr = target["pitr"]
    assert pitr["waiting_for_wal_after"] == backup_id
    assert pitr["newest_wal_archived_at"] is None  # no end before the start
    assert f"waiting for WAL after base backup {backup_id}" in pitr["note"]
    assert pitr["note"] in target["warnings"]
    assert f"warning: no moment is restorable by PITR yet: waiting for WAL after base backup {backup_id}" in text.stdout
    assert len(instants(window_line(text.stdout))) == 1, text.stdout  # the start only


def test_status_shows_a_window_from_the_base_backup_to_the_newest_wal_once_wal_after_it_is_archived(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
    cluster.wait_archived(cluster.switch_wal())

    as_json = cluster.opskit("status", "--json")
    text = cluster.opskit("status")

    (target,) = json.loads(as_json.stdout)["targets"]
    pitr = target["pitr"]
    assert pitr["waiting_for_wal_after"] is None and pitr["note"] is None
    start, end = instants(window_line(text.stdout))
    assert start <= end, text.stdout
    assert end == datetime.fromisoformat(pitr["newest_wal_archived_at"].replace("Z", "+00:00"))
