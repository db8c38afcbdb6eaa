"""A restore says where opskit's own CPU went, per stage, in its result and in ``restore --json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from opskit.backup import backup
from opskit.restore import restore
from tests.databases import local_config, run_sql
from tests.restore.test_parallel import encrypted_config

ROWS = "CREATE TABLE t (id int PRIMARY KEY, pad text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 60000) g;"
READ_STAGES = {"download", "sha256 stored", "zstd", "sha256 plain", "hand-off"}


def test_a_streamed_restore_reports_the_cpu_of_each_stage_of_the_read(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, ROWS)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    backup.run(ctx, target="app")

    restored = restore.run(ctx, target="app", jobs=1)

    assert set(restored.cpu) == READ_STAGES
    assert all(seconds >= 0 for seconds in restored.cpu.values())
    assert restored.cpu["zstd"] > 0 and restored.cpu["sha256 plain"] > 0


def test_a_parallel_restore_adds_the_loader_s_threads_and_an_encrypted_one_counts_age(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, ROWS)
    ctx = make_context(encrypted_config(pg_database, tmp_path))
    backup.run(ctx, target="app")

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.route == "loader"
    assert set(restored.cpu) == READ_STAGES | {"age", "split COPY text", "COPY rows", "other threads"}
    assert restored.cpu["age"] > 0 and restored.cpu["COPY rows"] > 0 and restored.cpu["split COPY text"] > 0


def test_restore_json_carries_the_cpu_stages(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, ROWS)
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[targets.app]\ndsn = "{local_config(pg_database, tmp_path)["targets"]["app"]["dsn"]}"\n'
        f'[storages.local]\nurl = "file://{tmp_path / "backups"}"\n'
    )
    opskit = [sys.executable, "-m", "opskit", "--config", str(config)]
    subprocess.run([*opskit, "backup", "now", "--target", "app"], check=True, capture_output=True)

    done = subprocess.run([*opskit, "restore", "latest", "--target", "app", "--json"], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["cpu"]) == READ_STAGES
