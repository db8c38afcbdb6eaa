"""The RPO of ``wal stream`` is its partial interval: recovery uses the shipped ``.partial`` of the last segment.

The primary dies before its current segment completes, so the newest rows exist in the
archive only in ``<segment>.partial``. ``restore --pitr --latest`` must end with them.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg

from opskit.wal import layout
from tests.wal.cluster import ArchivingCluster
from tests.wal.test_stream import start_stream, wait_for


def find_key(doc: object, key: str) -> str | None:
    """Return the first non-empty value of ``key`` anywhere in a JSON document."""
    if isinstance(doc, dict):
        if doc.get(key):
            return str(doc[key])
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            found = find_key(item, key)
            if found:
                return found
    return None


def test_rows_written_after_the_last_complete_segment_are_recovered_from_the_shipped_partial(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
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
            conn.execute("CREATE TABLE markers (id int PRIMARY KEY)")
        backup = cluster.opskit("backup", "now", "--kind", "base", "--target", "streamed")
        assert backup.returncode == 0, backup.stderr
        wait_for(wal / f"{cluster.switch_wal()}.zst", streamer)  # a fresh segment for the rows below
        with cluster.connect() as conn:
            conn.execute("INSERT INTO markers SELECT generate_series(1, 50)")
            # The insert position: with synchronous_commit off, pg_current_wal_lsn() (the write
            # position) may still be at the start of the segment.
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
        current = layout.segment_name(1, layout.parse_lsn(lsn) - 1)  # the segment holding the rows
        written = time.time()
        partial = wal / f"{current}.partial.zst"
        wait_for(partial, streamer)
        deadline = time.monotonic() + 30
        while partial.stat().st_mtime < written + 1.5:  # a partial shipped after the rows were flushed
            assert time.monotonic() < deadline, "no partial shipped after the rows"
            time.sleep(0.2)
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    status = cluster.opskit("status", "--json")
    archived_at = find_key(json.loads(status.stdout), "newest_wal_archived_at")
    # The RPO counts the shipped partial: the newest WAL reached the storage after the rows.
    assert archived_at and datetime.fromisoformat(archived_at.replace("Z", "+00:00")).timestamp() > written
    cluster.stop()  # the primary is lost before its segment completes
    assert not (wal / f"{current}.zst").exists()

    pgdata = cluster.root / "restored"
    restored_dirs.append((cluster.bin_dir, pgdata))
    port = cluster.recover_and_start(pgdata, "--latest", "--target", "streamed")["port"]
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
        assert conn.execute("SELECT count(*), max(id) FROM markers").fetchone() == (50, 50)
