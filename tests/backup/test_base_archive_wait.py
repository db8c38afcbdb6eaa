"""A base backup while the server's archive_command fails: said on stderr, given up after wal.archive_wait_timeout.

pg_basebackup -X none ends only once the server has archived the backup's last segment; with
``archive_command = 'false'`` that never happens. A real throwaway cluster (``tests/wal/cluster.py``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.wal.cluster import ArchivingCluster


def events(stderr: str) -> list[dict[str, Any]]:
    """Return the JSON log lines of a run's stderr (logs are JSON when stderr is not a terminal)."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def walsenders(cluster: ArchivingCluster) -> list[tuple[Any, ...]]:
    with cluster.connect() as conn:
        return conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = 'walsender' "
            "UNION ALL SELECT pid, application_name FROM pg_stat_replication"
        ).fetchall()


def failing_archive(cluster: ArchivingCluster, timeout: str) -> ArchivingCluster:
    """Set ``archive_command = 'false'`` and wal.archive_wait_timeout; return once the archiver has failed."""
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(f'\n[wal]\narchive_wait_timeout = "{timeout}"\n')
    with cluster.connect() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("CREATE TABLE t AS SELECT 1 AS id")
    cluster.switch_wal()
    deadline = time.monotonic() + 30
    while True:
        with cluster.connect() as conn:
            failures = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()[0]  # type: ignore[index]
        if failures:
            return cluster
        assert time.monotonic() < deadline, "archive_command = 'false' never failed"
        time.sleep(0.2)


def backup_command(cluster: ArchivingCluster) -> list[str]:
    return [sys.executable, "-m", "opskit", "--config", str(cluster.config_path), "backup", "now", "--kind", "base"]


def wait_without_walsenders(cluster: ArchivingCluster) -> list[tuple[Any, ...]]:
    """Return the walsenders left once they had 10 s to go (ending one is asynchronous)."""
    deadline = time.monotonic() + 10
    while walsenders(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    return walsenders(cluster)


def test_a_base_backup_waiting_on_a_failing_archive_command_says_so_and_gives_up_with_exit_4_leaving_nothing(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = failing_archive(archiving_cluster(), "3s")

    backup = subprocess.run(
        backup_command(cluster),
        capture_output=True,
        text=True,
        timeout=60,
    )

    said = [e for e in events(backup.stderr) if str(e.get("event", "")).startswith("waiting for the server to archive")]
    assert backup.returncode == 4, backup.stderr
    assert len(said) == 1, backup.stderr
    assert re.fullmatch(
        r"waiting for the server to archive WAL segment [0-9A-F]{24}: archive_command is failing "
        r"\(pg_stat_archiver: \d+ failures, last [0-9A-F]{24}\S* at \S+Z\); "
        r"the base backup is usable only once it is archived",
        said[0]["event"],
    ), said[0]["event"]
    error = backup.stderr.strip().splitlines()[-1]
    assert error.startswith("opskit: error: the server did not archive WAL segment "), error
    assert "within 3s (wal.archive_wait_timeout): archive_command is failing" in error
    listed = cluster.opskit("backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    app = cluster.archive_dir / "app"
    left = [
        p.relative_to(app) for p in app.rglob("*") if p.is_file() and p.relative_to(app).parts[0] not in ("wal", "runs")
    ]
    assert left == []  # the failed run's record in runs/ is all it leaves
    assert wait_without_walsenders(cluster) == []


def test_a_base_backup_stopped_while_it_waits_for_the_archive_leaves_no_walsender_waiting_on_the_server(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = failing_archive(archiving_cluster(), "10m")
    backup = subprocess.Popen(backup_command(cluster), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with cluster.connect() as conn:
                waiting = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'BackupWaitWalArchive'"
                ).fetchone()[0]  # type: ignore[index]
            if waiting:
                break
            assert backup.poll() is None, backup.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the backup never waited for the archive"
            time.sleep(0.2)
        backup.send_signal(signal.SIGTERM)
        backup.wait(timeout=30)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()

    assert backup.returncode == 130, backup.stderr.read()  # type: ignore[union-attr]
    assert wait_without_walsenders(cluster) == []
