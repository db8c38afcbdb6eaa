"""``opskit status`` over real storages (local disk and an S3 protocol server): RPO, 3-2-1, verify, drill."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.catalog import Artifact, Manifest, Verification, record_verification
from opskit.cli import main
from opskit.config.model import Config, TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ObjectiveBreached
from opskit.ops import status
from opskit.pipeline import compress_and_store
from opskit.storage.base import Storage, StorageConfig

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def store_backup(store: Storage, snapshot_time: datetime, target: str = "app") -> Manifest:
    """Commit a small backup the way ``backup now`` does: artifact first, manifest last."""
    backup_id = catalog.new_backup_id(snapshot_time)
    key = catalog.artifact_key(target, backup_id, "db", False)
    stored = compress_and_store(io.BytesIO(b"dump bytes " * 100), store, key)
    manifest = Manifest(
        id=backup_id,
        target=target,
        opskit_version="test",
        snapshot_time=snapshot_time,
        started_at=snapshot_time,
        finished_at=snapshot_time + timedelta(minutes=5),
        server={"major": 15, "database": "app"},
        tools={"pg_dump": {"major": 15}},
        artifacts=(
            Artifact("db", key, stored.stored.size, stored.stored.sha256, stored.plain.size, stored.plain.sha256),
        ),
    )
    catalog.write_manifest(store, manifest)
    return manifest


def make_context(storages: list[StorageConfig], now: datetime = NOW) -> AppContext:
    app = TargetConfig(
        name="app",
        dsn="postgresql://postgres@127.0.0.1:5432/postgres",
        storages=tuple(s.name for s in storages),
        staging="staging",
    )
    staging = TargetConfig(
        name="staging", dsn="postgresql://postgres@127.0.0.1:5432/postgres", storages=(storages[0].name,)
    )
    config = Config(targets={"app": app, "staging": staging}, storages={s.name: s for s in storages})
    return AppContext(config=config, clock=lambda: now)


def test_status_shows_the_newest_backup_where_it_is_and_that_3_2_1_holds(
    local_storage: StorageConfig, s3_bucket: StorageConfig
) -> None:
    offsite = replace(s3_bucket, offsite=True)
    ctx = make_context([local_storage, offsite])
    local, remote = ctx.storage(local_storage.name), ctx.storage(offsite.name)
    older = store_backup(local, NOW - timedelta(minutes=70))
    newest = store_backup(local, NOW - timedelta(minutes=30))
    for manifest in (older, newest):
        for info in local.list(manifest.prefix + "/"):
            with local.reader(info.key) as inp, remote.writer(info.key) as out:
                out.write(inp.read())

    report = status.run(ctx)

    assert [t.target for t in report.targets] == ["app"]  # staging targets are not protected targets
    item = report.targets[0]
    assert item.newest is not None and item.newest.id == newest.id
    assert item.holders == [local_storage.name, offsite.name]
    assert item.rpo.current == timedelta(minutes=30) and item.rpo.status == "ok"
    assert item.three_two_one and item.copies == 3 and item.kinds == ["file", "s3"]
    assert item.offsite == [offsite.name]
    assert not report.breaches
    report.raise_for_breach()


def test_one_storage_of_one_kind_does_not_satisfy_3_2_1(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage])
    store_backup(ctx.storage(local_storage.name), NOW - timedelta(minutes=10))

    item = status.run(ctx).targets[0]

    assert not item.three_two_one and item.copies == 2
    assert any("3-2-1 does not hold" in w for w in item.warnings)


def test_a_backup_older_than_the_rpo_target_makes_status_exit_6(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage])
    store_backup(ctx.storage(local_storage.name), NOW - timedelta(minutes=30))
    assert not status.run(ctx).breaches

    later = make_context([local_storage], now=NOW + timedelta(hours=1))
    report = status.run(later)

    assert report.targets[0].rpo.breached
    with pytest.raises(ObjectiveBreached) as caught:
        report.raise_for_breach()
    assert caught.value.exit_code == 6
    assert "current RPO 1h 30m, target 1h" in caught.value.message


def test_the_cli_exits_6_for_a_stale_backup_and_prints_json(tmp_path: Path) -> None:
    storage = StorageConfig(name="local", url=f"file://{tmp_path}/backups")
    ctx = make_context([storage], now=datetime.now(UTC))
    store_backup(ctx.storage("local"), datetime.now(UTC) - timedelta(hours=3))
    config = tmp_path / "opskit.toml"
    config.write_text(
        '[targets.app]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\nstaging = "staging"\n'
        '[targets.staging]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
    )

    result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])

    assert result.exit_code == 6, result.output
    data = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert data["breached"] is True
    assert data["targets"][0]["rpo"]["status"] == "breached"
    assert data["targets"][0]["newest_backup"]["storages"] == ["local"]


def test_daily_backups_against_a_one_hour_rpo_are_called_out_plainly(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage])
    for days in range(5):
        store_backup(ctx.storage(local_storage.name), NOW - timedelta(days=days, minutes=20))

    item = status.run(ctx).targets[0]

    assert not item.rpo.breached  # the newest backup is only 20 minutes old...
    assert item.breaches == [
        "RPO: current RPO 20m, target 1h; worst over 7d 24h 5m; achieved 24h, target 1h: "
        "the backup interval alone exceeds the RPO target"
    ]


def test_status_shows_the_last_verify_and_the_last_drill_and_breaches_on_a_slow_drill(
    local_storage: StorageConfig,
) -> None:
    ctx = make_context([local_storage])
    store = ctx.storage(local_storage.name)
    manifest = store_backup(store, NOW - timedelta(minutes=10))
    record_verification(
        store,
        Verification("app", manifest.id, store.name, NOW - timedelta(minutes=5), "verify", "full", "pass"),
    )
    drill_report = {
        "kind": "drill",
        "drill_id": "20261126T115500Z-abcd",
        "started_at": "2026-11-26T11:55:00Z",
        "finished_at": "2026-11-26T11:58:00Z",
        "verdict": "pass",
        "backup": {"id": manifest.id},
        "rto": {"measured_seconds": 5 * 3600.0, "estimated_seconds": 5 * 3600.0},
    }
    catalog.write_json(store, "app/drills/20261126T115500Z-abcd.json", drill_report)

    item = status.run(ctx).targets[0]

    assert item.last_verify is not None and item.last_verify["verdict"] == "pass"
    assert item.last_verify["backup_id"] == manifest.id
    assert item.last_drill is not None and item.last_drill["drill_id"] == "20261126T115500Z-abcd"
    assert item.rto is not None and item.rto.status == "breached"
    assert item.breaches == ["RTO: the last drill's estimated RTO is 5h, target 4h"]


def test_status_warns_that_archived_wal_without_a_base_backup_cannot_be_recovered(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage])
    store = ctx.storage(local_storage.name)
    store_backup(store, NOW - timedelta(hours=1))
    store.create("app/wal/000000010000000000000005.zst", b"segment bytes")

    (target,) = status.run(ctx, target="app").targets

    assert target.pitr is None
    assert any("WAL is archived but no base backup is kept" in w for w in target.warnings), target.warnings
