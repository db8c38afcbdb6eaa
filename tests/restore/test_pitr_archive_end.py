"""``opskit restore --pitr`` never ends "successfully" short of what the archive holds, and fails early where it must.

Every test restores a copy of one session-wide archive (tests/wal/cluster.py's
``archived_history``: a base backup, then segments of 2 markers each, then a quiet end), damaged
as the test needs, with the real CLI and a real server recovering it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from tests.wal.cluster import ArchivedHistory, ArchivingCluster, opskit_command


def restore(cluster: ArchivingCluster, *selection: str, start: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``restore --pitr SELECTION --pgdata <root>/restored [--start] --json`` on the cluster's (copied) archive."""
    return cluster.opskit(
        "restore",
        "--pitr",
        *selection,
        "--pgdata",
        str(cluster.root / "restored"),
        *(["--start"] if start else []),
        "--opskit-command",
        shlex.join(opskit_command()),
        "--json",
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """Return the one ``opskit: error:`` line of a failed run."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def wal_object(cluster: ArchivingCluster, segment: str) -> Path:
    return cluster.archive_dir / "app" / "wal" / f"{segment}.zst"


def marker_count(port: int) -> int:
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
        row = conn.execute("SELECT count(*) FROM markers").fetchone()
    assert row is not None
    return int(row[0])


def test_a_corrupt_segment_in_the_middle_of_the_archive_fails_the_latest_restore_with_exit_5_naming_it(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    middle = archived_history.segments[1]
    stored = wal_object(history_copy, middle)
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    result = restore(history_copy, "--latest")

    assert result.returncode == 5, result.stdout + result.stderr[-3000:]
    line = error_line(result)
    assert f"stopped at WAL file {middle}: wal fetch refused it" in line, line
    assert "does not decompress" in line or "does not match its recorded sha256" in line, line
    pgdata = history_copy.root / "restored"
    assert (pgdata / "recovery.signal").exists()  # not promoted: still recovering, a start continues it
    assert not (pgdata / "postmaster.pid").exists()


def test_a_segment_deleted_from_the_middle_of_the_archive_fails_the_latest_restore_with_exit_5_before_the_extract(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    middle = archived_history.segments[1]
    wal_object(history_copy, middle).unlink()

    result = restore(history_copy, "--latest")

    assert result.returncode == 5, result.stdout + result.stderr[-3000:]
    line = error_line(result)
    assert f"segment {middle} is missing from the archive" in line, line
    assert "--to-lsn" in line  # what to do: recover what precedes the gap
    assert not any((history_copy.root / "restored").iterdir())


def test_a_time_target_past_a_gap_fails_with_exit_5_instead_of_promoting_at_the_gap(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    middle = archived_history.segments[1]
    wal_object(history_copy, middle).unlink()

    result = restore(history_copy, "--to-time", archived_history.quiet_moment.isoformat())

    assert result.returncode == 5, result.stdout + result.stderr[-3000:]
    assert f"segment {middle} is missing from the archive" in error_line(result)
    assert not (history_copy.root / "restored" / "postmaster.pid").exists()


def test_a_time_with_no_transaction_after_it_recovers_to_the_archives_end_and_says_so(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    moment = archived_history.quiet_moment

    result = restore(history_copy, "--to-time", moment.isoformat())

    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["note"] == f"the archive holds no transaction after {report['target']}: recovered to its end"
    assert marker_count(report["port"]) == archived_history.rows
    reached = datetime.fromisoformat(report["last_transaction_time"].replace("Z", "+00:00"))
    assert reached <= moment


def test_a_time_after_the_newest_archived_wal_is_refused_with_exit_2_before_anything_is_extracted(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    future = datetime.now().astimezone() + timedelta(days=30)

    result = restore(history_copy, "--to-time", future.isoformat())

    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "is outside the PITR window" in error_line(result)
    pgdata = history_copy.root / "restored"
    assert not pgdata.exists() or not any(pgdata.iterdir())


def test_an_lsn_past_the_end_of_the_archive_is_refused_with_exit_2_before_anything_is_extracted(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    result = restore(history_copy, "--to-lsn", "FFFFFFFF/FFFFFFFF")

    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "is past the end of the archived WAL" in error_line(result)
    pgdata = history_copy.root / "restored"
    assert not pgdata.exists() or not any(pgdata.iterdir())


def test_a_restore_point_not_in_the_wal_after_the_backup_says_to_pass_an_older_backup(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    result = restore(history_copy, "--to-name", "no-such-point")

    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    line = error_line(result)
    assert "restore point no-such-point was not reached from base backup " in line, line
    assert "pass an older backup: opskit restore <older id> --pitr --to-name no-such-point" in line


def test_wal_covers_says_a_moment_behind_a_gap_is_not_covered_and_names_the_gap(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    middle = archived_history.segments[1]
    moment = archived_history.quiet_moment.isoformat()
    assert history_copy.opskit("wal", "covers", "--target", "app", moment).returncode == 0
    wal_object(history_copy, middle).unlink()

    result = history_copy.opskit("wal", "covers", "--target", "app", moment)
    as_json = history_copy.opskit("wal", "covers", "--target", "app", moment, "--json")

    assert result.returncode == 1, result.stderr
    assert f"has a gap at segment {middle}: recovery from it stops there" in result.stdout
    assert json.loads(as_json.stdout)["gap"]["first_missing"] == middle


def test_a_latest_restore_refuses_a_newest_segment_on_a_timeline_no_history_file_reaches(
    archived_history: ArchivedHistory, history_copy: ArchivingCluster
) -> None:
    # A promoted copy that archives into the same target without its 00000002.history: the
    # chain ends on timeline 1, and recovery would promote into a timeline 2 the archive holds.
    last = archived_history.segments[-1]
    orphan = "00000002" + last[8:]
    shutil.copy(wal_object(history_copy, last), wal_object(history_copy, orphan))

    result = restore(history_copy, "--latest")

    assert result.returncode == 5, result.stderr[-3000:]
    line = error_line(result)
    assert f"the archive's newest WAL segment {orphan} is on timeline 2, which no archived history file" in line
    assert "archive 00000002.history from the server that created timeline 2" in line
    assert not (history_copy.root / "restored").exists() or not any((history_copy.root / "restored").iterdir())
