"""The PITR window, the WAL RPO, slot lag, archive lag and the streamer's spool in ``opskit status`` and the metrics.

Every test runs a real throwaway cluster (``tests/wal/cluster.py``); the unreachable storage is moto
behind ``tests/faultproxy.py``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from opskit.config.load import parse_config
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, OpskitError
from opskit.ops.metrics import Metrics
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from opskit.wal import layout, stream
from tests.daemon import test_process as daemon_process
from tests.daemon.test_process import Daemon, get, metric, wait_for
from tests.databases import dsn_for
from tests.faultproxy import FaultProxy
from tests.servers import upstream_of
from tests.wal.cluster import ArchivingCluster
from tests.wal.test_stream import write_and_switch

start_daemon = daemon_process.start_daemon  # the fixture that runs `opskit daemon` as a process


def test_status_and_metrics_show_the_pitr_window_and_the_newest_archived_wal(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    with cluster.connect() as conn:  # WAL after the backup: a switch right after it may write nothing to archive
        conn.execute("CREATE TABLE after_the_backup (id int)")
    switched = cluster.switch_wal()
    cluster.wait_archived(switched)

    status = cluster.opskit("status", "--json")
    metrics_file = cluster.root / "opskit.prom"
    metrics = cluster.opskit("metrics", "--textfile", str(metrics_file))

    pitr = json.loads(status.stdout)["targets"][0]["pitr"]
    assert pitr["base_backups"] == 1
    assert pitr["oldest_restorable"] == manifest["snapshot_time"]
    assert pitr["newest_wal"] == switched
    assert 0 <= pitr["rpo_seconds"] < 120
    assert metrics.returncode == 0, metrics.stderr
    found = re.search(
        r'^opskit_wal_last_archived_timestamp_seconds\{target="app"\} (\S+)$', metrics_file.read_text(), re.M
    )
    assert found is not None
    archived_at = datetime.fromisoformat(pitr["newest_wal_archived_at"].replace("Z", "+00:00"))
    assert abs(float(found.group(1)) - archived_at.timestamp()) < 1


# --------------------------------------------------------------------------- lag, spool, unreachable storage


def current_lsn(cluster: ArchivingCluster) -> int:
    with cluster.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return layout.parse_lsn(str(row[0]))


def write_wal(cluster: ArchivingCluster, rows: int) -> None:
    """Write roughly ``rows`` * 100 bytes of WAL."""
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (id int, payload text)")
        conn.execute(
            "INSERT INTO filler SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, %s) g", (rows,)
        )


def wal_status(cluster: ArchivingCluster) -> dict[str, Any]:
    result = cluster.opskit("status", "--json", "--target", "app")
    assert result.stdout, result.stderr
    wal: dict[str, Any] = json.loads(result.stdout)["targets"][0]["wal"]
    return wal


def textfile_sample(cluster: ArchivingCluster, name: str) -> float:
    path = cluster.root / "opskit.prom"
    result = cluster.opskit("metrics", "--textfile", str(path))
    assert result.returncode == 0, result.stderr
    found = re.search(rf'^{name}\{{target="app"\}} (\S+)$', path.read_text(), re.M)
    assert found is not None, f"{name} missing:\n{path.read_text()}"
    return float(found.group(1))


def test_a_slot_nobody_reads_shows_a_growing_lag_and_unarchived_wal_an_archive_lag_in_status_and_metrics(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write('\n[wal]\nmax_spool = "64MiB"\n')
    spool = cluster.root / "state" / "wal-spool" / "app"
    spool.mkdir(parents=True)
    (spool / "000000010000000000000009").write_bytes(b"\0" * 1024 * 1024)
    with cluster.connect() as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('opskit', true)")
    cluster.wait_archived(cluster.switch_wal())

    settled = wal_status(cluster)
    before = current_lsn(cluster)
    write_wal(cluster, 20_000)  # about 3 MiB: stays inside the segment the switch opened
    written = current_lsn(cluster) - before
    first = wal_status(cluster)
    slot_lag_metric = textfile_sample(cluster, "opskit_wal_slot_lag_bytes")
    archive_lag_metric = textfile_sample(cluster, "opskit_wal_archive_lag_bytes")
    write_wal(cluster, 20_000)
    second = wal_status(cluster)

    assert settled["archive_lag_bytes"] < 64 * 1024  # just after a switch: nothing of substance unarchived
    assert first["slot"] == "opskit" and first["slot_exists"] and first["slot_active"] is False
    assert first["slot_lag_bytes"] >= written
    assert second["slot_lag_bytes"] >= first["slot_lag_bytes"] + written // 2
    assert written <= first["archive_lag_bytes"] < 16 * 1024 * 1024
    assert second["archive_lag_bytes"] > first["archive_lag_bytes"]
    assert first["spool_bytes"] == 1024 * 1024 and first["spool_limit_bytes"] == 64 * 1024 * 1024
    assert slot_lag_metric >= first["slot_lag_bytes"]
    assert archive_lag_metric >= first["archive_lag_bytes"]
    assert textfile_sample(cluster, "opskit_wal_spool_bytes") == 1024 * 1024
    assert textfile_sample(cluster, "opskit_wal_spool_limit_bytes") == 64 * 1024 * 1024
    text = cluster.opskit("status", "--target", "app").stdout
    assert re.search(
        r"^  WAL: slot opskit lag [\d.]+ MiB, archive lag [\d.]+ MiB, spool 1(\.0)? MiB of 64(\.0)? MiB$", text, re.M
    ), text


def test_status_says_when_the_server_cannot_be_read_and_keeps_the_rest(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    with open(cluster.config_path, "a", encoding="utf-8") as config:
        config.write("\n[wal]\n")
    cluster.stop()

    wal = wal_status(cluster)

    assert wal["slot"] == "opskit"
    assert wal["spool_bytes"] is None  # no spool on this host
    assert "cannot connect to target 'app'" in wal["error"]
    text = cluster.opskit("status", "--target", "app").stdout
    assert "  WAL: slot opskit lag unknown, archive lag unknown, spool unknown of 1.0 GiB, server unreadable: " in text


def s3_table(storage: StorageConfig, endpoint: str) -> str:
    """Return a [storages.s3] table for the s3_bucket fixture through ``endpoint``, one attempt per request."""
    return (
        f'[storages.s3]\nurl = "{storage.url}"\nendpoint_url = "{endpoint}"\nregion = "{storage.options["region"]}"\n'
        'access_key_id = "env:AWS_ACCESS_KEY_ID"\nsecret_access_key = "env:AWS_SECRET_ACCESS_KEY"\nmax_attempts = 1\n'
    )


class StreamThread:
    """``wal stream`` of one target run in this process (as the daemon runs its job), stopped by ``stop()``."""

    def __init__(self, ctx: AppContext, target: str) -> None:
        self.ctx = ctx
        self.error: OpskitError | None = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target: str) -> None:
        try:
            stream.run(self.ctx, target)
        except OpskitError as exc:
            self.error = exc

    def stop(self) -> None:
        self.ctx.cancel.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def scrape(name: str, target: str = "streamed") -> float | None:
    """Return one sample of the metrics registry the daemon serves (a fresh one: the WAL figures are live)."""
    found = re.search(rf'^{name}\{{target="{target}"\}} (\S+)$', Metrics().exposition().decode(), re.M)
    return float(found.group(1)) if found else None


def wait_until(condition: Callable[[], Any], what: str, thread: StreamThread, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert thread.error is None or what.startswith("the stream stops"), thread.error
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_streamer_whose_storage_is_unreachable_says_so_in_its_metrics_stops_at_the_spool_limit_and_then_catches_up(
    archiving_cluster: Callable[..., ArchivingCluster], s3_bucket: StorageConfig
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
    with FaultProxy(upstream_of(s3_bucket)) as proxy:
        proxy.fail_next(10**9, status=503)
        config = parse_config(
            f'[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["s3"]\n\n'
            + s3_table(s3_bucket, proxy.url)
            + f'\n[tools]\nstate_dir = "{cluster.root / "stream-state"}"\n\n'
            '[wal]\npartial_interval = "1s"\nmax_spool = "64MiB"\n'
        )
        streamer = StreamThread(AppContext(config=config), "streamed")
        try:
            first = write_and_switch(cluster)
            wait_until(lambda: (scrape("opskit_wal_ship_failures_total") or 0) >= 2, "ship failures", streamer)
            down = scrape("opskit_wal_stream_storage_up")
            spooled = scrape("opskit_wal_spool_bytes")
            limit = scrape("opskit_wal_spool_limit_bytes")
            wait_until(lambda: scrape("opskit_wal_slot_lag_bytes") is not None, "the slot lag", streamer)
            write_wal(cluster, 700_000)  # about 90 MiB of WAL: more than the spool may hold
            wait_until(lambda: streamer.error is not None, "the stream stops at the spool limit", streamer, 120)
        finally:
            streamer.stop()
        stopped = streamer.error
        assert scrape("opskit_wal_stream_storage_up") is None  # no streamer runs any more
        proxy.clear()
        streamer = StreamThread(AppContext(config=config), "streamed")
        try:
            wait_until(lambda: scrape("opskit_wal_stream_storage_up") == 1, "the storage answering again", streamer)
            wait_until(lambda: stored(s3_bucket, first), f"{first} in the bucket", streamer)
            wait_until(
                lambda: scrape("opskit_wal_last_archived_timestamp_seconds"), "the newest stored segment", streamer
            )
            archived_at = scrape("opskit_wal_last_archived_timestamp_seconds")
            wait_until(
                lambda: (scrape("opskit_wal_spool_bytes") or 0) < 32 * 1024 * 1024, "the spool drained", streamer
            )
        finally:
            streamer.stop()

    assert down == 0
    assert spooled is not None and spooled >= 16 * 1024 * 1024  # the finished segment waits in the spool
    assert limit == 64 * 1024 * 1024
    assert isinstance(stopped, BackupFailed) and stopped.exit_code == 4
    assert "over wal.max_spool (67108864): the storage is not keeping up (last storage error:" in stopped.message
    assert streamer.error is None
    # The daemon refreshes after a run, and a stream never ends: the streamer itself moves the RPO metric.
    assert archived_at is not None and abs(time.time() - archived_at) < 120


def stored(storage: StorageConfig, name: str) -> bool:
    return open_storage(storage).exists(layout.object_key("streamed", name, False))


def test_the_daemon_running_a_wal_stream_job_serves_the_streamer_s_state_on_metrics(
    archiving_cluster: Callable[..., ArchivingCluster],
    s3_bucket: StorageConfig,
    pg_database: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE t (id int)")
    with FaultProxy(upstream_of(s3_bucket)) as proxy:
        proxy.fail_next(10**9, status=503)
        daemon = start_daemon(
            f'[targets.streamed]\ndsn = "{cluster.dsn()}"\nstorages = ["s3"]\n\n'
            + s3_table(s3_bucket, proxy.url)
            + f'\n[daemon]\ncontrol_dsn = "{dsn_for(pg_database)}"\nshutdown_grace = "1s"\n\n'
            '[wal]\npartial_interval = "1s"\n',
            {"stream": 'action = "wal-stream"\ntarget = "streamed"\ninterval = "2s"\n'},
        )
        write_and_switch(cluster)
        body = wait_for(
            lambda: (
                (text := get(daemon.url + "/metrics")[1])
                and metric(text, "opskit_wal_stream_storage_up", target="streamed") == 0
                and metric(text, "opskit_wal_slot_lag_bytes", target="streamed") is not None
                and text
            ),
            60,
            "the streamer's storage failures in /metrics",
            daemon,
        )
        daemon.terminate()

    assert (metric(body, "opskit_wal_ship_failures_total", target="streamed") or 0) >= 1
    assert (metric(body, "opskit_wal_spool_bytes", target="streamed") or 0) >= 16 * 1024 * 1024
    assert metric(body, "opskit_wal_spool_limit_bytes", target="streamed") == 1024**3
    assert any(e["event"] == "wal stream: storage failed, WAL kept in the spool" for e in daemon.events())
