"""``opskit copy`` of a corrupt source backup: exit 5 and "verify the source", not "retried by the next copy"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from opskit.backup import backup
from opskit.catalog import list_backups
from tests.databases import dsn_for, run_sql


def test_copying_a_corrupt_backup_exits_5_with_the_hint_to_verify_the_source_and_writes_nothing(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t AS SELECT generate_series(1, 1000) id;")
    primary, second = tmp_path / "primary", tmp_path / "second"
    storages = {"local": {"url": f"file://{primary}"}, "second": {"url": f"file://{second}"}}
    ctx = make_context({"targets": {"app": {"dsn": dsn_for(pg_database), "storages": ["local"]}}, "storages": storages})
    manifest = backup.run(ctx, target="app").manifest
    dump = primary / manifest.artifact("db").key
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[targets.app]\ndsn = "{dsn_for(pg_database)}"\nstorages = ["local", "second"]\n'
        f'[storages.local]\nurl = "file://{primary}"\n[storages.second]\nurl = "file://{second}"\n'
    )

    for _ in range(2):  # a second run meets the same bytes: the same answer
        copied = subprocess.run(
            [sys.executable, "-m", "opskit", "--config", str(config), "copy", "--target", "app", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert copied.returncode == 5, copied.stderr
        lines = [line for line in copied.stderr.splitlines() if line.startswith("opskit: error:")]
        assert len(lines) == 1, copied.stderr
        assert f"'{manifest.artifact('db').key}' in storage 'local' does not match its manifest" in lines[0]
        assert "run 'opskit backup verify' on the source storage" in lines[0]
        assert "retried" not in copied.stderr
        assert json.loads(copied.stdout)["failed"][0]["storage"] == "second"
        assert list_backups(ctx.storage("second"), "app") == []
