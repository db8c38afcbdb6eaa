"""The README's recovery without opskit: ``age -d | zstd -d | tar -x`` and a restore_command of age/zstd lines.

If opskit is gone, a base backup and its WAL archive must still be recoverable to a moment
with the standard tools alone; this runs the README's recipe with the real ``age``, ``zstd``
and ``tar`` on an age-encrypted archive.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable

import psycopg
import pytest

from tests.pgcluster import as_postgres, free_port, run_as_postgres
from tests.restore.test_pitr import write_markers
from tests.wal.cluster import AgeKey, ArchivingCluster, give_to_postgres


def test_an_encrypted_base_backup_and_wal_recover_to_a_moment_with_age_zstd_and_tar_alone(
    archiving_cluster: Callable[..., ArchivingCluster], age_key: AgeKey
) -> None:
    for tool in ("age", "zstd", "tar"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    key = age_key.path
    cluster = archiving_cluster(age_key.encryption)
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    backup_id = json.loads(backup.stdout)["id"]
    markers = write_markers(cluster, 12)
    cluster.wait_archived(cluster.switch_wal())
    before, after = markers[5], markers[6]
    moment = before[1] + (after[1] - before[1]) / 2
    pgdata = cluster.root / "by-hand"
    pgdata.mkdir(mode=0o700)
    archive = cluster.archive_dir / "app"

    # The README's recipe, step by step.
    subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"age -d -i {key} {archive}/{backup_id}/base.tar.zst.age | zstd -q -d | tar -x -C {pgdata}",
        ],
        check=True,
    )
    restore_command = f'f={archive}/wal/%f.zst.age; test -f "$f" && age -d -i {key} "$f" | zstd -q -d -f -o "%p"'
    with open(pgdata / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
        conf.write(f"restore_command = '{restore_command}'\n")
        conf.write(f"recovery_target_time = '{moment.isoformat(sep=' ')}'\n")
        conf.write("recovery_target_action = 'promote'\n")
        conf.write("archive_mode = off\n")
    (pgdata / "recovery.signal").touch()
    give_to_postgres(pgdata)
    port = free_port()
    options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={pgdata}"
    run_as_postgres(
        [f"{cluster.bin_dir}/pg_ctl", "-D", str(pgdata), "-o", options, "-l", str(pgdata / "log"), "-w", "start"]
    )
    try:
        deadline = time.monotonic() + 60
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone() != (False,):
                assert time.monotonic() < deadline, (pgdata / "log").read_text()
                time.sleep(0.2)
            ids = [row[0] for row in conn.execute("SELECT id FROM markers ORDER BY id")]
    finally:
        subprocess.run(
            as_postgres([f"{cluster.bin_dir}/pg_ctl", "-D", str(pgdata), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )

    assert ids == list(range(1, before[0] + 1))
    assert after[0] not in ids
