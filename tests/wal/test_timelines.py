"""A failover onto timeline 2 that keeps archiving, and a point-in-time restore that follows it.

The archiving cluster is backed up, writes, and dies; a copy recovered from that archive is
promoted (timeline 2) and keeps archiving into the same archive, as a promoted standby would;
it writes more. A restore from the timeline-1 base backup with ``--latest`` must follow
``00000002.history`` and end with the rows written on timeline 2, and ``wal verify`` must
accept the chain across the switch.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.pgcluster import free_port, run_as_postgres
from tests.wal.cluster import ArchivingCluster, opskit_command


def rows(port: int) -> list[str]:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
        return [row[0] for row in conn.execute("SELECT note FROM events ORDER BY id")]


def wait_promoted(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                    return
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the recovered server did not promote")
        time.sleep(0.2)


def test_recovery_follows_a_promotion_onto_timeline_2_and_wal_verify_accepts_the_switch(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE events (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO events (note) VALUES ('before the backup')")
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    with cluster.connect() as conn:
        conn.execute("INSERT INTO events (note) VALUES ('timeline 1')")
    cluster.wait_archived(cluster.switch_wal())
    cluster.stop()  # the primary is lost

    # Failover: a copy recovered to the end of the archive, archiving again (a promoted standby).
    promoted = cluster.root / "promoted"
    restored = cluster.opskit(
        "restore", "--pitr", "--latest", "--pgdata", str(promoted), "--opskit-command", shlex.join(opskit_command())
    )
    assert restored.returncode == 0, restored.stderr
    with open(promoted / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write("archive_mode = on\n")  # opskit's restore turns it off; a real failover keeps archiving
    port = free_port()
    restored_dirs.append((cluster.bin_dir, promoted))
    run_as_postgres(
        [
            f"{cluster.bin_dir}/pg_ctl",
            "-D",
            str(promoted),
            "-l",
            str(cluster.root / "promoted.log"),
            "-o",
            f"-p {port}",
            "-w",
            "start",
        ]
    )
    wait_promoted(port)
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
        assert conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone() == (2,)
        conn.execute("INSERT INTO events (note) VALUES ('timeline 2')")
        closed = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert closed is not None
    deadline = time.monotonic() + 60
    while not (cluster.archive_dir / "app" / "wal" / f"{closed[0]}.zst").exists():
        assert time.monotonic() < deadline, (cluster.root / "promoted.log").read_text()[-2000:]
        time.sleep(0.2)
    assert (cluster.archive_dir / "app" / "wal" / "00000002.history.zst").exists()

    verify = cluster.opskit("wal", "verify", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Recovery from the timeline-1 base backup follows the history file onto timeline 2.
    again = cluster.root / "again"
    restored_dirs.append((cluster.bin_dir, again))
    report = cluster.recover_and_start(again, "--latest")
    assert report["timeline"] == 3  # promoted again at the end of timeline 2
    assert rows(report["port"]) == ["before the backup", "timeline 1", "timeline 2"]
