"""``opskit status`` when the newest verification of a target failed: a warning (exit 0, as for a failed drill)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from opskit.catalog import Verification, record_verification
from opskit.cli import main
from opskit.storage.base import StorageConfig
from tests.ops.test_status import make_context, store_backup


def test_status_warns_when_the_newest_verification_failed_and_says_so_in_json(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ctx = make_context([StorageConfig(name="local", url=f"file://{tmp_path}/backups")], now=now)
    store = ctx.storage("local")
    older = store_backup(store, now - timedelta(minutes=40))
    newest = store_backup(store, now - timedelta(minutes=10))
    record_verification(
        store, Verification("app", older.id, "local", now - timedelta(minutes=30), "verify", "full", "pass")
    )
    record_verification(
        store, Verification("app", newest.id, "local", now - timedelta(minutes=5), "verify", "full", "fail")
    )
    config = tmp_path / "opskit.toml"
    config.write_text(
        '[targets.app]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\nstaging = "staging"\n'
        '[targets.staging]\ndsn = "postgresql://postgres@127.0.0.1:5432/postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
    )

    text = CliRunner().invoke(main, ["--config", str(config), "status", "--target", "app"])
    as_json = CliRunner().invoke(main, ["--config", str(config), "status", "--target", "app", "--json"])

    assert text.exit_code == 0, text.output  # a warning, like a failed drill: not an objective breach
    failed = f"of backup {newest.id} in storage 'local' failed (the newest backup: the RPO counts it)"
    [line] = [line for line in text.stdout.splitlines() if "warning: the last verification" in line]
    assert failed in line and "do not rely on it" in line
    assert as_json.exit_code == 0, as_json.output
    [item] = json.loads(as_json.stdout)["targets"]
    assert item["last_verify"]["verdict"] == "fail"
    assert any(failed in warning for warning in item["warnings"])
