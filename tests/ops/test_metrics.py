"""Metrics computed from the stored catalog, with the names of docs/operations.md §5."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from opskit.catalog import Artifact, Manifest, new_backup_id, write_json, write_manifest
from opskit.config.load import parse_config
from opskit.config.model import Config
from opskit.context import AppContext
from opskit.core.errors import StorageError
from opskit.ops.metrics import Metrics

SPEC_NAMES = {
    "opskit_backup_last_success_timestamp_seconds",
    "opskit_backup_last_recovery_point_timestamp_seconds",
    "opskit_backup_last_duration_seconds",
    "opskit_backup_last_size_bytes",
    "opskit_backup_runs_total",
    "opskit_backup_copy_last_success_timestamp_seconds",
    "opskit_backups_retained",
    "opskit_backups_future_dated",
    "opskit_drill_last_success_timestamp_seconds",
    "opskit_drill_last_result",
    "opskit_drill_estimated_rto_seconds",
    "opskit_drill_data_loss_seconds",
    "opskit_rpo_target_seconds",
    "opskit_rto_target_seconds",
    "opskit_storage_up",
    "opskit_build_info",
    "opskit_wal_last_archived_timestamp_seconds",
    "opskit_wal_archive_lag_bytes",
    "opskit_wal_slot_lag_bytes",
    "opskit_wal_spool_bytes",
    "opskit_wal_spool_limit_bytes",
    "opskit_wal_ship_failures_total",
    "opskit_wal_stream_storage_up",
    # The daemon's job families (docs/operations.md §5), always declared, with series once jobs exist.
    "opskit_job_runs_total",
    "opskit_job_skipped_total",
    "opskit_job_last_success_timestamp_seconds",
    "opskit_job_last_failure_timestamp_seconds",
}
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(
        f"""
        [objectives]
        rpo = "1h"
        rto = "4h"
        [storages.primary]
        url = "file://{tmp_path / "primary"}"
        [storages.offsite]
        url = "file://{tmp_path / "offsite"}"
        offsite = true
        [storages.broken]
        url = "file://{tmp_path / "broken"}"
        [targets.app]
        dsn = "dbname=app"
        storages = ["primary", "offsite"]
        [targets.other]
        dsn = "dbname=other"
        storages = ["broken"]
        """
    )


class Unreachable:
    """A storage whose server is down (a local directory cannot fail to list)."""

    name = "broken"

    def list(self, prefix: str = "") -> Iterator[object]:
        raise StorageError("storage 'broken': connection refused")


def manifest(snapshot: datetime, size: int = 1000) -> Manifest:
    backup_id = new_backup_id(snapshot)
    return Manifest(
        id=backup_id,
        target="app",
        opskit_version="0.1.0",
        snapshot_time=snapshot,
        started_at=snapshot,
        finished_at=snapshot + timedelta(seconds=30),
        server={"database": "app"},
        tools={},
        artifacts=(Artifact("db", f"app/{backup_id}/db.dump.zst", size, "0" * 64, size * 3, "1" * 64),),
        extra={"phases": {"dump": 25.0, "globals": 1.5}},
    )


def sample(text: str, name: str, **labels: str) -> float:
    """Return the value of one sample in exposition text."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
            if got == wanted:
                return float(match.group(3))
    raise AssertionError(f"no sample {name}{{{wanted}}} in:\n{text}")


def test_values_come_from_the_stored_catalog_so_a_restart_tells_the_truth(config: Config, tmp_path: Path) -> None:
    ctx = AppContext(config=config)
    ctx._storages["broken"] = Unreachable()  # type: ignore[assignment]
    primary, offsite = ctx.storage("primary"), ctx.storage("offsite")
    old, new = manifest(T0 - timedelta(hours=2), size=4000), manifest(T0, size=5000)
    for m in (old, new):
        write_manifest(primary, m)
    write_manifest(offsite, old)
    write_json(
        primary,
        "app/drills/20261001T060000Z.json",
        {
            "verdict": "pass",
            "finished_at": "2026-10-01T06:20:00Z",
            "rto": {"estimated_seconds": 1800},
            "data_loss_seconds": 3600,
        },
    )
    write_json(primary, "app/drills/20261101T060000Z.json", {"verdict": "fail", "finished_at": "2026-11-01T06:20:00Z"})

    metrics = Metrics()
    metrics.refresh(ctx)
    text = metrics.exposition().decode()

    assert sample(text, "opskit_backup_last_success_timestamp_seconds", target="app") == new.finished_at.timestamp()
    assert sample(text, "opskit_backup_last_recovery_point_timestamp_seconds", target="app") == T0.timestamp()
    assert sample(text, "opskit_backup_last_size_bytes", target="app") == 5000
    assert sample(text, "opskit_backup_last_duration_seconds", target="app", phase="total") == 30
    assert sample(text, "opskit_backup_last_duration_seconds", target="app", phase="dump") == 25
    assert sample(text, "opskit_backups_retained", target="app", storage="primary") == 2
    assert sample(text, "opskit_backups_retained", target="app", storage="offsite") == 1
    assert sample(text, "opskit_backup_copy_last_success_timestamp_seconds", target="app", storage="offsite") > 0
    assert sample(text, "opskit_drill_last_result", target="app") == 0
    assert (
        sample(text, "opskit_drill_last_success_timestamp_seconds", target="app")
        == datetime(2026, 10, 1, 6, 20, tzinfo=UTC).timestamp()
    )
    assert sample(text, "opskit_rpo_target_seconds", target="app") == 3600
    assert sample(text, "opskit_rto_target_seconds", target="app") == 4 * 3600
    assert sample(text, "opskit_storage_up", storage="primary") == 1
    assert sample(text, "opskit_storage_up", storage="broken") == 0
    assert sample(text, "opskit_backup_runs_total", target="app", result="failure") == 0
    assert sample(text, "opskit_build_info", version=__import__("opskit").__version__) == 1
    names = {m.group(1) for m in re.finditer(r"^# TYPE (\w+) ", text, re.M)}
    counters = ("opskit_backup_runs", "opskit_wal_ship_failures", "opskit_job_runs", "opskit_job_skipped")
    names = {n + "_total" if n in counters else n for n in names}
    assert names == SPEC_NAMES
    assert "backup_id" not in text

    # A refresh sees deletions (manifests are cached, listings are not).
    primary.delete(f"app/{new.id}/manifest.json")
    metrics.refresh(ctx, ["app"])
    text = metrics.exposition().decode()
    assert sample(text, "opskit_backup_last_success_timestamp_seconds", target="app") == old.finished_at.timestamp()
    assert sample(text, "opskit_backups_retained", target="app", storage="primary") == 1


def test_a_run_is_counted_by_result(config: Config) -> None:
    metrics = Metrics()
    metrics.record_run("app", "success")
    metrics.record_run("app", "success")
    metrics.record_run("app", "failure")
    text = metrics.exposition().decode()
    assert sample(text, "opskit_backup_runs_total", target="app", result="success") == 2
    assert sample(text, "opskit_backup_runs_total", target="app", result="failure") == 1


def test_the_metrics_command_writes_a_textfile_atomically(config: Config, tmp_path: Path) -> None:
    from opskit.cli import main

    config_path = tmp_path / "opskit.toml"
    config_path.write_text(
        f'[storages.primary]\nurl = "file://{tmp_path / "primary"}"\n[targets.app]\ndsn = "dbname=app"\n'
    )
    write_manifest(AppContext(config=parse_config(config_path.read_text())).storage("primary"), manifest(T0))
    out = tmp_path / "textfile" / "opskit.prom"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["--config", str(config_path), "metrics", "--textfile", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert sample(text, "opskit_backup_last_recovery_point_timestamp_seconds", target="app") == T0.timestamp()
    assert [p.name for p in out.parent.iterdir()] == ["opskit.prom"]  # no temp file left behind
