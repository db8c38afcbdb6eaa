"""The newest end of the PITR window on a database archived by ``wal stream``: what the archive can be proven to hold.

The listing proves the archive complete up to when its newest WAL was stored; on an idle
database the streamer stores nothing after that, so a moment a few seconds ago lies after it.
The source server can prove more: its insert position is inside the archived WAL. Each test
runs a throwaway cluster, the real streamer, the real CLI and a real server recovering.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.restore.test_pitr_archive_end import error_line, marker_count
from tests.wal.cluster import ArchivingCluster, pitr_start_args
from tests.wal.test_stream import start_stream, wait_for

ROWS = 40  # under autovacuum's analyze threshold (50): no WAL of its own


class Streamed:
    """A cluster whose target ``streamed`` is archived by a running ``wal stream`` (partial_interval 1s)."""

    def __init__(self, cluster: ArchivingCluster) -> None:
        self.cluster = cluster
        self.wal = cluster.archive_dir / "streamed" / "wal"
        with open(cluster.config_path, "a", encoding="utf-8") as config:
            config.write(
                f'\n[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["local"]\n\n[wal]\npartial_interval = "1s"\n'
            )
        with cluster.connect() as conn:
            conn.execute("ALTER SYSTEM SET autovacuum = off")  # nothing writes WAL but the test
            conn.execute("SELECT pg_reload_conf()")
        self.streamer = start_stream(cluster)

    def stop_streaming(self) -> None:
        if self.streamer.poll() is None:
            self.streamer.send_signal(signal.SIGTERM)
            self.streamer.wait(timeout=30)

    def newest_stored(self) -> datetime:
        """Return when the newest WAL object reached the storage (what the listing proves)."""
        newest = max(p.stat().st_mtime for p in self.wal.iterdir() if p.name.endswith(".zst"))
        return datetime.fromtimestamp(newest, UTC)

    def restore_to(self, moment: datetime) -> subprocess.CompletedProcess[str]:
        pgdata = self.cluster.root / "restored"
        args = pitr_start_args(pgdata, "--target", "streamed", "--to-time", moment.isoformat())
        return self.cluster.opskit(*args)


@pytest.fixture
def streamed(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
) -> Iterator[Streamed]:
    """Yield a streamed cluster with a base backup and ROWS markers written after it, all shipped."""
    cluster = archiving_cluster()
    restored_dirs.append((cluster.bin_dir, cluster.root / "restored"))
    setup = Streamed(cluster)
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE markers (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        backup = cluster.opskit("backup", "now", "--kind", "base", "--target", "streamed")
        assert backup.returncode == 0, backup.stderr
        with cluster.connect() as conn:
            conn.execute("INSERT INTO markers (id) SELECT generate_series(1, %s)", (ROWS,))
        wait_for(setup.wal / f"{current_segment(cluster)}.partial.zst", setup.streamer)
        yield setup
    finally:
        setup.stop_streaming()


def current_segment(cluster: ArchivingCluster) -> str:
    with cluster.connect() as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()
    assert row is not None
    return str(row[0])


def wait_until_idle(cluster: ArchivingCluster, timeout: float = 40) -> None:
    """Wait for the standby snapshot the background writer logs within 15 s of the last WAL; none follows it."""
    with cluster.connect() as conn:
        start = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        deadline = time.monotonic() + timeout
        while conn.execute("SELECT pg_current_wal_insert_lsn() = %s", start).fetchone() == (True,):
            assert time.monotonic() < deadline, "the background writer logged no standby snapshot"
            time.sleep(0.2)


def test_a_time_after_the_newest_stored_wal_recovers_to_the_archives_end_when_the_idle_server_wrote_nothing_since(
    streamed: Streamed,
) -> None:
    wait_until_idle(streamed.cluster)
    time.sleep(3)  # the streamer ships the last partial within its 1 s interval, and nothing after it
    moment = datetime.now(UTC) - timedelta(seconds=1)
    assert streamed.newest_stored() < moment  # the listing alone does not reach the moment

    result = streamed.restore_to(moment)

    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["note"] == f"the archive holds no transaction after {report['target']}: recovered to its end"
    assert marker_count(report["port"]) == ROWS  # the same state as --latest
    reached = datetime.fromisoformat(report["last_transaction_time"].replace("Z", "+00:00"))
    assert reached <= moment


def test_a_time_after_the_newest_stored_wal_is_refused_with_exit_2_when_the_server_wrote_wal_the_archive_lacks(
    streamed: Streamed,
) -> None:
    streamed.stop_streaming()
    with psycopg.connect(streamed.cluster.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO markers (id) VALUES (%s)", (ROWS + 1,))  # never archived
    time.sleep(1)
    moment = datetime.now(UTC)
    assert streamed.newest_stored() < moment

    result = streamed.restore_to(moment)

    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    line = error_line(result)
    assert "is outside the PITR window" in line, line
    assert "the archive is known to hold every transaction only up to" in line, line
    assert "the server has written WAL up to" in line, line
    assert "pass --latest for the end of the archive" in line, line
    pgdata = streamed.cluster.root / "restored"
    assert not pgdata.exists() or not any(pgdata.iterdir())
