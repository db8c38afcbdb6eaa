"""Faults: the server restarts in the middle of a restore.

The restore fails (exit 4), and the database it created is dropped once the server answers
again, so the next ``restore latest`` does not stop at "already exists". The server is a
throwaway cluster (``tests/pgcluster.py``), stopped for a few seconds while pg_restore runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from opskit.storage.base import StorageConfig
from tests.faults.helpers import PG_HOST, REAL_PG_BIN, cli_env, one_line_error, wait_for, write_setup
from tests.pgcluster import ScramCluster, _wait_until_ready, as_postgres

PASSWORD_ENV = "OPSKIT_T_RESTART_PASSWORD"


def slow_restore_dir(tmp_path: Path, bytes_per_second: int) -> Path:
    """Return a directory whose pg_restore reads its stdin through a throttle; the other tools are the real ones."""
    tools = tmp_path / "slow-restore-bin"
    tools.mkdir()
    for name in ("pg_dump", "pg_dumpall", "psql"):
        (tools / name).symlink_to(f"{REAL_PG_BIN}/{name}")
    throttle = tools / "throttle.py"
    throttle.write_text(
        textwrap.dedent(
            f"""\
            import sys, time
            start, sent = time.monotonic(), 0
            try:
                while data := sys.stdin.buffer.read1(32 * 1024):
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                    sent += len(data)
                    time.sleep(max(0.0, sent / {bytes_per_second} - (time.monotonic() - start)))
            except BrokenPipeError:
                sys.exit(1)
            """
        )
    )
    script = tools / "pg_restore"
    script.write_text(
        f'#!/bin/bash\nif [ "$1" = "--version" ]; then exec {REAL_PG_BIN}/pg_restore --version; fi\n'
        f'{sys.executable} {throttle} | {REAL_PG_BIN}/pg_restore "$@"\n'
    )
    script.chmod(0o755)
    return tools


def restored_databases(cluster: ScramCluster, source: str) -> list[str]:
    with cluster.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (source + "_restore_%",))
        return [row[0] for row in rows]


def test_a_server_restart_mid_restore_leaves_no_partial_database(
    tmp_path: Path, scram_cluster: ScramCluster, local_storage: StorageConfig
) -> None:
    source = "opskit_t_restart_src"
    with scram_cluster.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {source} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {source}")
    with scram_cluster.connect(source) as conn:
        conn.execute("CREATE TABLE t AS SELECT i, md5(i::text) AS h FROM generate_series(1, 200000) AS i")
    slow = slow_restore_dir(tmp_path, bytes_per_second=512 * 1024)
    setup = write_setup(tmp_path, source, local_storage, target_extra=f'password = "env:{PASSWORD_ENV}"')
    text = setup.path.read_text().replace("[tools]\n", f'[tools]\npg_bin_dir = "{slow}"\n', 1)
    setup.path.write_text(text.replace(f"host={PG_HOST} user=postgres dbname={source}", scram_cluster.dsn(source)))
    env = {PASSWORD_ENV: scram_cluster.password}
    taken = setup.run("backup", "now", env=env)
    assert taken.returncode == 0, taken.stderr
    data_dir = scram_cluster.data_dir

    process = subprocess.Popen(
        setup.argv("restore", "latest"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(env)
    )
    try:
        wait_for(lambda: restored_databases(scram_cluster, source), what="the restore's new database")
        time.sleep(1)
        subprocess.run(
            as_postgres([f"{scram_cluster.bin_dir}/pg_ctl", "-D", str(data_dir), "-m", "fast", "-w", "stop"]),
            check=True,
            capture_output=True,
        )
        time.sleep(4)  # the restore fails while the server is down, and its first drop attempt with it
        subprocess.run(
            as_postgres(
                [
                    f"{scram_cluster.bin_dir}/pg_ctl",
                    "-D",
                    str(data_dir),
                    "-l",
                    str(data_dir.parent / "server.log"),
                    "-w",
                    "restart",
                ]
            ),
            check=True,
            capture_output=True,
        )
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
        _wait_until_ready(scram_cluster)

    assert process.returncode in (3, 4), stderr
    one_line_error(stderr)
    assert restored_databases(scram_cluster, source) == []
    with scram_cluster.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {source} WITH (FORCE)")
