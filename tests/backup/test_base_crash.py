"""The server dies in the middle of a base backup: the run fails with one line and nothing is listed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

from tests.faults.helpers import one_line_error
from tests.wal.cluster import ArchivingCluster


def wait_streaming(cluster: ArchivingCluster, timeout: float = 60) -> None:
    """Wait until the server reports a base backup streaming its data files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with cluster.connect() as conn:
            row = conn.execute("SELECT phase FROM pg_stat_progress_basebackup").fetchone()
        if row is not None and row[0] == "streaming database files":
            return
        time.sleep(0.02)
    raise AssertionError("the base backup never started streaming")


def test_a_server_crash_mid_base_backup_fails_the_run_and_leaves_no_listed_backup(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        # About 250 MB of data that does not compress away, so the stream lasts long enough to be cut.
        conn.execute(
            "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS filler "
            "FROM generate_series(1, 2000000) AS g"
        )
    backup = subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(cluster.config_path), "backup", "now", "--kind", "base"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        wait_streaming(cluster)
        cluster.stop()  # pg_ctl -m immediate: the server is gone mid-stream
        _, stderr = backup.communicate(timeout=120)
    finally:
        if backup.poll() is None:
            backup.kill()

    assert backup.returncode in (3, 4), stderr
    line = one_line_error(stderr)
    assert "pg_basebackup of target 'app' failed" in line and "cut mid-stream: the server stopped" in line
    assert not list((cluster.archive_dir / "app").glob("*/manifest.json"))
    listing = cluster.opskit("backup", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.strip() in ("[]", "")
