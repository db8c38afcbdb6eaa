"""``opskit restore --pitr`` against a real archiving cluster with a writer: recovery stops at the moment asked for."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tests.wal.cluster import AgeKey, ArchivingCluster, give_to_postgres, opskit_command


def write_markers(cluster: ArchivingCluster, count: int) -> list[tuple[int, datetime]]:
    """Insert one timestamped marker row every 100 ms; return (id, commit time as the server saw it)."""
    markers = []
    with cluster.connect() as conn:
        for _ in range(count):
            row = conn.execute("INSERT INTO markers DEFAULT VALUES RETURNING id, clock_timestamp()").fetchone()
            assert row is not None
            markers.append((row[0], row[1]))
            time.sleep(0.1)
    return markers


def test_restore_to_a_time_between_two_markers_keeps_the_earlier_and_not_the_later(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    write_markers(cluster, 5)
    backup = cluster.opskit("backup", "now", "--kind", "base")
    assert backup.returncode == 0, backup.stderr
    markers = write_markers(cluster, 20)
    cluster.wait_archived(cluster.switch_wal())
    before, after = markers[9], markers[10]
    moment = before[1] + (after[1] - before[1]) / 2
    pgdata = cluster.root / "restored"
    restored_dirs.append((cluster.bin_dir, pgdata))

    report = cluster.recover_and_start(pgdata, "--to-time", moment.isoformat())

    with psycopg.connect(f"host=127.0.0.1 port={report['port']} user=postgres dbname=postgres") as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM markers ORDER BY id")]
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert ids[-1] == before[0]
    assert after[0] not in ids
    assert ids == list(range(1, before[0] + 1))
    assert in_recovery == (False,)
    assert report["timeline"] == 2
    assert datetime.fromisoformat(report["last_transaction_time"].replace("Z", "+00:00")) <= moment


def test_a_moment_before_the_oldest_base_backup_is_refused_and_the_directory_stays_empty(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    early = datetime.fromisoformat(json.loads(backup.stdout)["started_at"].replace("Z", "+00:00")) - timedelta(hours=1)
    pgdata = cluster.root / "restored"

    result = cluster.opskit("restore", "--pitr", "--to-time", early.isoformat(), "--pgdata", str(pgdata))

    assert result.returncode == 2
    assert "has no base backup consistent before time" in result.stderr
    assert not pgdata.exists() or not any(pgdata.iterdir())


def test_a_data_directory_that_is_not_empty_is_refused(archiving_cluster: Callable[..., ArchivingCluster]) -> None:
    cluster = archiving_cluster()
    pgdata = cluster.root / "restored"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")

    result = cluster.opskit("restore", "--pitr", "--latest", "--pgdata", str(pgdata))

    assert result.returncode == 2
    assert "is not an empty directory" in result.stderr
    assert [p.name for p in pgdata.iterdir()] == ["PG_VERSION"]


def marker_ids(port: int) -> list[int]:
    """Return the ids of the markers on the restored server at ``port``, in order."""
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
        return [row[0] for row in conn.execute("SELECT id FROM markers ORDER BY id")]


def restore_counting_opskit(cluster: ArchivingCluster, pgdata: Path) -> tuple[dict[str, Any], Callable[[], list[str]]]:
    """Run ``restore --pitr --latest --start`` with the server's opskit behind a script that logs each call.

    Returns the JSON report and a function listing the restore_command's calls of opskit.
    """
    log = cluster.root / "opskit-calls.log"
    counting = cluster.root / "counting-opskit"
    counting.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {shlex.join(opskit_command())} "$@"\n')
    counting.chmod(0o755)
    give_to_postgres(cluster.root)
    result = cluster.opskit(
        "restore", "--pitr", "--latest", "--pgdata", str(pgdata), "--start", "--opskit-command", str(counting), "--json"
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), lambda: log.read_text().splitlines() if log.exists() else []


def test_a_started_restore_has_every_wal_file_ready_so_the_server_starts_no_opskit(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    markers = write_markers(cluster, 5)
    for _ in range(3):  # several segments to replay
        cluster.wait_archived(cluster.switch_wal())
        write_markers(cluster, 1)
    cluster.wait_archived(cluster.switch_wal())
    pgdata = cluster.root / "restored"
    restored_dirs.append((cluster.bin_dir, pgdata))

    report, calls = restore_counting_opskit(cluster, pgdata)

    assert marker_ids(report["port"]) == list(range(1, markers[-1][0] + 4))  # every marker, the last ones included
    # The segments, the end of the archive and the history probes all came from the read-ahead.
    assert calls() == []
    assert not (pgdata / "pg_wal" / "opskit-prefetch").exists()


def test_encrypted_wal_is_read_ahead_and_recovered_by_a_started_restore(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]], age_key: AgeKey
) -> None:
    cluster = archiving_cluster(age_key.encryption)
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    markers = write_markers(cluster, 4)
    cluster.wait_archived(cluster.switch_wal())
    pgdata = cluster.root / "restored"
    restored_dirs.append((cluster.bin_dir, pgdata))

    report, calls = restore_counting_opskit(cluster, pgdata)

    assert marker_ids(report["port"]) == [m[0] for m in markers]
    assert list((cluster.archive_dir / "app" / "wal").glob("*.zst.age"))  # the WAL is stored encrypted
    assert calls() == []  # and the read-ahead decrypted every file the server asked for
    assert not (pgdata / "pg_wal" / "opskit-prefetch").exists()
