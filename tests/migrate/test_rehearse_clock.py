"""``migrate --rehearse`` never rehearses on a future-dated backup (a host with a wrong clock)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.migrate.support import opskit, write_staged_config


def test_rehearse_takes_a_fresh_backup_instead_of_a_future_dated_one(
    migrate_db: str, scripts_dir: Callable[..., Path], tmp_path: Path
) -> None:
    scripts_dir({"V1__base.sql": "CREATE TABLE base (id int);"})
    config = write_staged_config(tmp_path, migrate_db)
    assert opskit(config, "backup", "now", "--target", "app").returncode == 0
    (manifest_path,) = (tmp_path / "backups" / "app").glob("*/manifest.json")
    data = json.loads(manifest_path.read_text())
    ahead = (datetime.now(UTC) + timedelta(days=365)).isoformat().replace("+00:00", "Z")
    data["snapshot_time"] = data["started_at"] = data["finished_at"] = ahead
    manifest_path.write_text(json.dumps(data))

    result = opskit(config, "migrate", "--target", "app", "--rehearse", timeout=300)

    assert result.returncode == 0, result.stderr
    assert f"restoring backup {data['id']}" not in result.stderr
    assert "taking one for the rehearsal" in result.stderr
