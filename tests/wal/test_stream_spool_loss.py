"""``opskit wal stream`` losing its spool while the storage is down: the server still has the WAL, the archive no gap.

pg_receivewal's slot follows the local spool; the streamer's second slot (``<slot>_shipped``)
follows the archive. A real throwaway cluster (``tests/wal/cluster.py``): its own
archive_command keeps archiving to target ``app``, so the server recycles any segment no slot holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from opskit.core.log import configure_logging
from opskit.wal import layout
from opskit.wal.stream import prepare_spool
from tests.wal.cluster import ArchivingCluster
from tests.wal.test_stream import start_stream, wait_for, write_and_switch

SEGMENT = 16 * 1024 * 1024


def slot_restart_lsn(cluster: ArchivingCluster, slot: str) -> int | None:
    with cluster.connect() as conn:
        row = conn.execute(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
    return layout.parse_lsn(row[0]) if row and row[0] else None


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill_with_children(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the streamer and its pg_receivewal (what an evicted pod's processes get)."""
    children_file = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    children = [int(pid) for pid in children_file.read_text().split()] if children_file.exists() else []
    process.send_signal(signal.SIGKILL)
    process.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_wal_spooled_while_the_storage_is_down_survives_the_loss_of_the_spool_and_the_archive_has_no_gap(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    store = cluster.root / "stream-archive"
    store.mkdir()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(
            f'\n[storages.streamstore]\nurl = "file://{store}"\n\n'
            f'[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["streamstore"]\n\n'
            '[wal]\npartial_interval = "1s"\n'
        )
    wal = store / "streamed" / "wal"
    spool = cluster.root / "state" / "wal-spool" / "streamed"
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
    streamer = start_stream(cluster)
    try:
        backup = cluster.opskit("backup", "now", "--kind", "base", "--target", "streamed", "--json")
        assert backup.returncode == 0, backup.stderr
        wal_stop = json.loads(backup.stdout)["base"]["wal_stop"]
        wait_for(wal / f"{wal_stop}.zst", streamer)
        # The storage fails: a file where its folder was.
        store.rename(cluster.root / "stream-archive.away")
        store.write_text("not a folder")
        spooled = [write_and_switch(cluster) for _ in range(3)]
        with cluster.connect() as conn:
            switched_at = layout.parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])  # type: ignore[index]
        wait_until(lambda: (slot_restart_lsn(cluster, "opskit") or 0) >= switched_at, "pg_receivewal's flush")
        assert all((spool / name).exists() for name in spooled)
        status = cluster.opskit("status", "--json", "--target", "streamed")
        slot_lag = json.loads(status.stdout)["targets"][0]["wal"]["slot_lag_bytes"]
        kill_with_children(streamer)
        shutil.rmtree(spool)
        with cluster.connect() as conn:
            conn.execute("CHECKPOINT")
        write_and_switch(cluster)
        with cluster.connect() as conn:
            conn.execute("CHECKPOINT")
        store.unlink()
        (cluster.root / "stream-archive.away").rename(store)
        streamer = start_stream(cluster)
        newest = write_and_switch(cluster)
        wait_for(wal / f"{newest}.zst", streamer)
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    restarted = streamer.stderr.read().decode()  # type: ignore[union-attr]

    assert "the spool lacks WAL not stored yet; streaming it again from the server" in restarted
    # The lag follows the slot that holds the WAL: the three segments not stored, not pg_receivewal's flush.
    assert slot_lag >= 3 * SEGMENT - 64 * 1024
    verify = cluster.opskit("wal", "verify", "--target", "streamed", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert all((wal / f"{name}.zst").exists() for name in spooled)
    # The keeping slot moved on once the WAL was stored: it holds no more than the segment being written.
    shipped = slot_restart_lsn(cluster, "opskit_shipped")
    assert shipped is not None and shipped >= layout.segment_number(newest)[1] * SEGMENT


def test_a_spool_that_lacks_the_wal_not_stored_yet_is_emptied_and_restarts_at_the_first_segment_not_stored(
    tmp_path: Path,
) -> None:
    later = tmp_path / "000000010000000000000009.partial"
    later.touch()
    (tmp_path / "00000001.history").touch()  # not WAL of a segment: left alone

    marker = prepare_spool(tmp_path, 5 * SEGMENT, 1, SEGMENT)

    assert marker == "000000010000000000000005.partial"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000001.history", marker]
    assert (tmp_path / marker).stat().st_size == 0


def test_a_spool_that_lost_wal_pg_receivewal_had_received_is_warned_about(tmp_path: Path) -> None:
    with capture_logs() as logs:
        marker = prepare_spool(tmp_path, 5 * SEGMENT, 1, SEGMENT, spooled_end=8 * SEGMENT + 4096)

    assert marker == "000000010000000000000005.partial"
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "wal stream: the spool lacks WAL not stored yet; streaming it again from the server")
    ]


def test_a_first_start_with_both_slots_at_one_position_and_an_empty_spool_is_no_warning(tmp_path: Path) -> None:
    # At INFO: an earlier test in this worker may have left the level at WARNING (a CLI run with
    # -q), and structlog filters by level before capture_logs sees the event.
    configure_logging(json_logs=True)
    with capture_logs() as logs:
        marker = prepare_spool(tmp_path, 2 * SEGMENT + 40, 1, SEGMENT, spooled_end=2 * SEGMENT + 40)

    assert marker == "000000010000000000000002.partial"
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("info", "wal stream: streaming starts at the first WAL not stored yet")
    ]


def test_a_spool_holding_the_wal_not_stored_yet_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "000000010000000000000005").write_bytes(b"\0" * 1024)
    (tmp_path / "000000010000000000000006.partial").touch()

    assert prepare_spool(tmp_path, 5 * SEGMENT, 1, SEGMENT) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000010000000000000005",
        "000000010000000000000006.partial",
    ]


def test_a_streamer_that_cannot_create_its_second_slot_says_so_and_streams_on_pg_receivewal_s_slot_alone(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write(f'\n[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["local"]\n')
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
        slots = int(conn.execute("SHOW max_replication_slots").fetchone()[0])  # type: ignore[index]
        for number in range(slots - 1):  # room for pg_receivewal's slot only
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (f"other_{number}",))
    streamer = start_stream(cluster)
    try:
        shipped = write_and_switch(cluster)
        wait_for(cluster.archive_dir / "streamed" / "wal" / f"{shipped}.zst", streamer)
    finally:
        streamer.send_signal(signal.SIGTERM)
        streamer.wait(timeout=30)
    stderr = streamer.stderr.read().decode()  # type: ignore[union-attr]

    assert streamer.returncode == 130, stderr
    assert "cannot create the slot that keeps WAL on the server until it is stored" in stderr
    assert "all replication slots are in use" in stderr
    assert slot_restart_lsn(cluster, "opskit_shipped") is None
