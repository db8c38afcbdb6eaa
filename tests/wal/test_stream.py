"""``opskit wal stream`` on a real cluster: segments shipped as they finish, the partial one on its interval, a SIGKILL survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from opskit.wal import layout
from tests.wal.cluster import ArchivingCluster


def start_stream(cluster: ArchivingCluster) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(cluster.config_path), "wal", "stream", "--target", "streamed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )


def write_and_switch(cluster: ArchivingCluster) -> str:
    """Write a little WAL (a switch with nothing new is a no-op) and close the segment; return its name."""
    with cluster.connect() as conn:
        conn.execute("INSERT INTO t VALUES (0)")
    return cluster.switch_wal()


def wait_for(path: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"wal stream exited {process.returncode}: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"{path.name} was not shipped"
        time.sleep(0.2)


def test_streamed_segments_and_the_partial_one_reach_the_archive_and_a_killed_streamer_resumes_without_a_gap(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(
            f'\n[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["local"]\n\n[wal]\npartial_interval = "1s"\n'
        )
    wal = cluster.archive_dir / "streamed" / "wal"
    streamer = start_stream(cluster)
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
            current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]  # type: ignore[index]
        wait_for(wal / f"{current}.partial.zst", streamer)
        first = write_and_switch(cluster)
        wait_for(wal / f"{first}.zst", streamer)
        streamer.send_signal(signal.SIGKILL)
        streamer.wait()
        second = write_and_switch(cluster)
        streamer = start_stream(cluster)
        third = write_and_switch(cluster)
        wait_for(wal / f"{third}.zst", streamer)
        time.sleep(1.5)
        # The restarted streamer took the slot over from the killed one's pg_receivewal and keeps running.
        assert streamer.poll() is None, streamer.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)

    shipped = sorted(
        p.name[:24]
        for p in wal.iterdir()
        if layout.is_segment_name(p.name[:24]) and p.name.endswith(".zst") and ".partial" not in p.name
    )
    numbers = [layout.segment_number(name)[1] for name in shipped]
    assert len({first, second, third}) == 3
    assert second in shipped
    assert numbers == list(range(numbers[0], numbers[-1] + 1))
    assert streamer.returncode == 130


def test_a_first_start_on_an_empty_archive_with_a_new_spool_warns_of_no_lost_wal(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(f'\n[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["local"]\n')
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
    streamer = start_stream(cluster)
    try:
        shipped = write_and_switch(cluster)
        wait_for(cluster.archive_dir / "streamed" / "wal" / f"{shipped}.zst", streamer)
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    stderr = streamer.stderr.read().decode()  # type: ignore[union-attr]

    assert streamer.returncode == 130, stderr
    assert "streaming starts at the first WAL not stored yet" in stderr
    assert '"level": "warning"' not in stderr, stderr


def test_a_partial_segment_left_half_padded_is_removed_before_pg_receivewal_starts(tmp_path: Path) -> None:
    from opskit.wal.stream import remove_torn_partials

    segment = 16 * 1024 * 1024
    torn = tmp_path / "000000010000000000000005.partial"
    torn.write_bytes(b"\0" * 5169152)  # what a pg_receivewal stopped mid-padding leaves
    padded = tmp_path / "000000010000000000000004.partial"
    with open(padded, "wb") as out:
        out.truncate(segment)
    (tmp_path / "000000010000000000000006.partial").touch()

    assert remove_torn_partials(tmp_path, segment) == [torn.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000010000000000000004.partial",
        "000000010000000000000006.partial",
    ]
