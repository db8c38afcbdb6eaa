"""Faults: pg_dump killed mid-stream, and opskit itself SIGKILLed mid-upload.

Nothing may become visible: no manifest, nothing new in ``backup list``, the earlier
backup untouched. What a killed opskit could not clean up (a temp file, an incomplete S3
multipart upload) is swept by a later ``prune`` once the grace period is over.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg
import pytest

from opskit.storage.base import StorageConfig
from tests.faults.helpers import (
    add_random_bytes,
    databases_like,
    kill_cli,
    leftovers,
    local_files,
    one_line_error,
    real_pg_dump_pid,
    s3_objects,
    slow_tools_dir,
    upload_in_progress,
    wait_for,
    write_setup,
)


def test_pg_dump_killed_mid_stream_fails_with_exit_4_and_commits_nothing(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup = write_setup(tmp_path, database, local_storage)
    first = setup.run("backup", "now")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in local_files(local_storage)}

    slow = slow_tools_dir(tmp_path, bytes_per_second=4 * 1024 * 1024)
    setup = write_setup(tmp_path, database, local_storage, target_extra=f'pg_bin_dir = "{slow}"')
    cli = setup.start("backup", "now")
    dump_pid = wait_for(lambda: real_pg_dump_pid(cli.pid), what="pg_dump to start")
    assert isinstance(dump_pid, int)
    os.kill(dump_pid, signal.SIGKILL)
    _, stderr = cli.communicate(timeout=60)

    assert cli.returncode == 4, stderr
    line = one_line_error(stderr)
    assert "pg_dump of target 'app' failed" in line
    assert "nothing was committed" in line
    assert len(setup.backups()) == 1
    # The earlier backup is byte for byte what it was, and no temp file is left behind.
    assert {p: p.read_bytes() for p in local_files(local_storage)} == before


def test_pg_dump_killed_mid_upload_to_s3_aborts_the_multipart_upload(
    tmp_path: Path, database: str, s3_bucket: StorageConfig
) -> None:
    add_random_bytes(database, 2)
    setup = write_setup(tmp_path, database, s3_bucket, part_size="256KiB")
    first = setup.run("backup", "now")
    assert first.returncode == 0, first.stderr
    committed, objects = setup.backups(), s3_objects(s3_bucket)

    slow = slow_tools_dir(tmp_path, bytes_per_second=2 * 1024 * 1024)
    setup = write_setup(tmp_path, database, s3_bucket, part_size="256KiB", target_extra=f'pg_bin_dir = "{slow}"')
    cli = setup.start("backup", "now")
    wait_for(lambda: upload_in_progress(s3_bucket), what="a multipart upload to start")
    dump_pid = real_pg_dump_pid(cli.pid)
    assert dump_pid is not None, "pg_dump finished before the test could kill it"
    os.kill(dump_pid, signal.SIGKILL)
    _, stderr = cli.communicate(timeout=60)

    assert cli.returncode == 4, stderr
    assert "pg_dump of target 'app' failed" in one_line_error(stderr)
    assert setup.backups() == committed
    assert leftovers(s3_bucket) == [], "the failed run's multipart upload must be aborted"
    assert s3_objects(s3_bucket) == objects


@pytest.mark.parametrize("storage_fixture", ["local_storage", "s3_bucket"])
def test_opskit_killed_mid_upload_lists_nothing_new_and_prune_sweeps_the_leftovers(
    tmp_path: Path, database: str, storage_fixture: str, request: pytest.FixtureRequest
) -> None:
    storage: StorageConfig = request.getfixturevalue(storage_fixture)
    add_random_bytes(database, 2)  # ~2 MiB that zstd cannot shrink: several 256 KiB parts
    setup = write_setup(tmp_path, database, storage, part_size="256KiB")
    first = setup.run("backup", "now")
    assert first.returncode == 0, first.stderr
    committed = setup.backups()

    slow = slow_tools_dir(tmp_path, bytes_per_second=2 * 1024 * 1024)
    setup = write_setup(tmp_path, database, storage, part_size="256KiB", target_extra=f'pg_bin_dir = "{slow}"')
    cli = setup.start("backup", "now")
    wait_for(lambda: upload_in_progress(storage), what="the upload to start")
    kill_cli(cli)  # SIGKILL of the CLI alone: no handler, no cleanup, no abort

    assert cli.returncode == -signal.SIGKILL
    assert setup.backups() == committed
    assert leftovers(storage), "a SIGKILLed run cannot clean up: its temp file or upload is still there"

    if storage.kind == "file":
        # Within the grace period prune leaves the leftovers alone (a run might still be writing).
        # Not checked on S3: moto reports every multipart upload as initiated on 2010-11-10,
        # so there every upload is past any grace period.
        kept = setup.run("prune")
        assert kept.returncode == 0, kept.stderr
        assert leftovers(storage)

    swept = setup.run("prune", "--grace", "0s")
    assert swept.returncode == 0, swept.stderr
    assert setup.backups() == committed
    assert leftovers(storage) == []
    if storage.kind == "s3":
        artifacts: list[dict[str, str]] = committed[0]["artifacts"]  # type: ignore[assignment]
        committed_keys = {f"backups/{a['key']}" for a in artifacts}
        assert committed_keys <= set(s3_objects(storage))
    else:
        assert len(local_files(storage)) == 3  # the committed backup: db, globals, manifest


def copies_running(database: str) -> int:
    """Return how many of the restore's COPYs into databases named after ``database`` are running."""
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opskit restore'"
            " AND query LIKE 'COPY %%' AND datname LIKE %s",
            (database + "_restore_%",),
        ).fetchone()
    return int(row[0]) if row else 0


def sessions_left(database: str) -> int:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s", (database + "_restore_%",)
        ).fetchone()
    return int(row[0]) if row else 0


def test_sigterm_during_a_parallel_restore_stops_the_copies_and_drops_the_new_database(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    add_random_bytes(database, 60)  # ~120 MiB of COPY text: loading takes a few seconds
    setup = write_setup(tmp_path, database, local_storage)
    assert setup.run("backup", "now").returncode == 0

    cli = setup.start("restore", "latest", "--jobs", "2")
    wait_for(lambda: copies_running(database) >= 1, what="the restore's COPYs to start")
    cli.send_signal(signal.SIGTERM)
    _, stderr = cli.communicate(timeout=60)

    assert cli.returncode == 130, stderr
    assert "interrupted" in stderr
    assert databases_like(database + "_restore_") == []
    assert sessions_left(database) == 0
    assert list(setup.state_dir.iterdir()) == []
