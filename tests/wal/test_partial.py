"""A busy server's segment being written is shipped as it grows, not only on the partial interval, and its lag counts it."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from opskit.wal import lag, partial
from tests.wal.cluster import ArchivingCluster
from tests.wal.test_stream import start_stream, wait_for

PAGE = 8192
SEGMENT = 16 * 1024 * 1024


def decompressed(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()


def test_the_written_bytes_of_a_padded_segment_are_its_filled_pages(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    name = cluster.switch_wal()
    cluster.wait_archived(name)
    segment = decompressed(cluster.archive_dir / "app" / "wal" / f"{name}.zst")
    padded = segment[: 37 * PAGE] + bytes(SEGMENT - 37 * PAGE)

    # The server leaves the rest of a switched segment as zeros, exactly like pg_receivewal's padding.
    written = partial.written_bytes(io.BytesIO(segment), SEGMENT)
    assert 37 * PAGE < written < SEGMENT
    assert segment[written:] == bytes(SEGMENT - written)
    assert segment[written - PAGE : written] != bytes(PAGE)
    assert partial.written_bytes(io.BytesIO(padded), SEGMENT) == 37 * PAGE
    assert partial.written_bytes(io.BytesIO(bytes(SEGMENT)), SEGMENT) == 0


def test_a_partial_that_grew_by_partial_bytes_is_shipped_long_before_the_interval(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(
            f'\n[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["local"]\n\n'
            '[wal]\npartial_interval = "10m"\npartial_bytes = "256KiB"\n'
        )
    wal = cluster.archive_dir / "streamed" / "wal"
    streamer = start_stream(cluster)
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE t (id int)")
            first = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]  # type: ignore[index]
        wait_for(wal / f"{first}.partial.zst", streamer)  # the interval's first round, at start
        cluster.switch_wal()  # a fresh segment: only its growth can ship it within the ten minutes
        with cluster.connect() as conn:
            # The cluster runs with synchronous_commit off: this commit must flush its WAL itself, or
            # the flush position read below can still be the switch's, under load.
            conn.execute("SET synchronous_commit = on")
            conn.execute("INSERT INTO t SELECT generate_series(1, 20000)")  # about 1 MiB of WAL
        with cluster.connect() as conn:  # after the commit: its WAL is flushed, so pg_receivewal is sent it
            name, offset = conn.execute("SELECT * FROM pg_walfile_name_offset(pg_current_wal_flush_lsn())").fetchone()  # type: ignore[misc]
        shipped = wal / f"{name}.partial.zst"
        deadline = time.monotonic() + 30
        while not (shipped.exists() and partial.written_bytes(io.BytesIO(decompressed(shipped)), SEGMENT) >= offset):
            assert streamer.poll() is None, streamer.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"{shipped.name} was not shipped up to offset {offset}"
            time.sleep(0.2)
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    assert offset > 256 * 1024
    assert streamer.returncode == 130


def test_the_archive_lag_counts_what_a_shipped_partial_holds(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        conn.execute("CHECKPOINT")
        current = int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()[0])  # type: ignore[index]
        name = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]  # type: ignore[index]
        previous = f"{name[:16]}{int(name[16:], 16) - 1:08X}"

        segments_only = lag.read_lag(conn, None, previous)
        with_partial = lag.read_lag(conn, None, previous, archived_end=current)

    # The server may log a record of its own between the queries (a running-transactions snapshot): a page's worth.
    assert segments_only.archive_lag_bytes is not None and with_partial.archive_lag_bytes is not None
    assert current % SEGMENT <= segments_only.archive_lag_bytes < current % SEGMENT + PAGE
    assert with_partial.archive_lag_bytes < PAGE
