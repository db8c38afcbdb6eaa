"""A PITR drill of a cluster with a corrupted heap tuple fails on pg_amcheck, not earlier and not silently.

The cluster of tests/wal/cluster.py runs without data checksums (initdb's default), so
pg_basebackup copies the damaged page as it is and the server still starts: the damage
reaches the scratch server the way silent corruption reaches a real backup, and only
pg_amcheck can see it.
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.drill.test_pitr_drill import PHASES, assert_scratch_gone, drill
from tests.pgcluster import run_as_postgres
from tests.wal.cluster import ArchivingCluster

AMCHECK = "pg_amcheck heap and btree, all databases"
PAGE_HEADER_SIZE = 24  # PageHeaderData; the line pointer array follows it
# Outside the cluster's valid transaction IDs; XIDs compare modulo 2^32, so pg_amcheck reports
# it as preceding the oldest valid one.
BOGUS_XMIN = 0xFFFFFFF0


def corrupt_first_tuple(cluster: ArchivingCluster, table: str) -> None:
    """Overwrite the t_xmin of the tuple at block 0, offset 1 of ``table`` while the server is stopped.

    The server is checkpointed and stopped with a fast shutdown first, so the page on disk is
    the current one and no shared buffer or WAL record puts the old bytes back; it is started again after.
    """
    with cluster.connect() as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory') || '/' || pg_relation_filepath(%s)", (table,)
        ).fetchone()
        conn.execute("CHECKPOINT")
    assert row is not None
    data_file = Path(row[0])
    run_as_postgres([f"{cluster.bin_dir}/pg_ctl", "-D", str(cluster.data_dir), "-m", "fast", "-w", "stop"])
    with open(data_file, "r+b") as heap:
        (item,) = struct.unpack_from("<I", heap.read(PAGE_HEADER_SIZE + 4), PAGE_HEADER_SIZE)
        tuple_offset = item & 0x7FFF  # ItemIdData: lp_off is the low 15 bits; t_xmin opens the tuple header
        heap.seek(tuple_offset)
        heap.write(struct.pack("<I", BOGUS_XMIN))
    run_as_postgres(
        [
            f"{cluster.bin_dir}/pg_ctl",
            "-D",
            str(cluster.data_dir),
            "-l",
            str(cluster.root / "server.log"),
            "-w",
            "start",
        ]
    )


def source_amcheck(cluster: ArchivingCluster) -> subprocess.CompletedProcess[str]:
    """Run pg_amcheck on the source cluster itself, then remove the extension it installed (the drill installs its own)."""
    argv = [f"{cluster.bin_dir}/pg_amcheck", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    result = subprocess.run([*argv, "--all", "--install-missing"], capture_output=True, text=True, check=False)
    with cluster.connect() as conn:
        conn.execute("DROP EXTENSION IF EXISTS amcheck")
    return result


def test_a_drill_of_a_backup_with_a_corrupted_heap_tuple_fails_pg_amcheck_naming_the_table_and_exits_5(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE victims (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO victims SELECT g, 'row ' || g FROM generate_series(1, 100) g")
    corrupt_first_tuple(cluster, "victims")
    damaged = source_amcheck(cluster)
    assert damaged.returncode != 0 and '"postgres.public.victims", block 0, offset 1' in damaged.stdout, damaged
    backup = cluster.opskit("backup", "now", "--kind", "base")
    assert backup.returncode == 0, backup.stderr
    cluster.wait_archived(cluster.switch_wal())

    result = drill(cluster, "--json")

    assert result.returncode == 5, result.stdout[-3000:] + result.stderr  # docs: 5, a drill check failed
    report = json.loads(result.stdout)
    assert report["verdict"] == "fail"
    assert [p["name"] for p in report["phases"]] == PHASES  # recovered and verified: only the check failed
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["recovery completes"]["ok"] and checks["pg_verifybackup"]["ok"]  # the copy is faithful
    assert checks[AMCHECK]["ok"] is False
    assert 'heap table "postgres.public.victims", block 0, offset 1' in checks[AMCHECK]["actual"]
    assert f"xmin {BOGUS_XMIN}" in checks[AMCHECK]["actual"]
    assert f"failed: {AMCHECK}" in result.stderr
    assert_scratch_gone(report)
