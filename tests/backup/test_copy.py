"""3-2-1 copies: secondary storages receive every backup, and a failed copy never undoes a backup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pyrage

from opskit.backup import backup, copy
from opskit.catalog import list_backups
from opskit.restore import restore
from opskit.storage.base import StorageConfig
from tests.databases import dsn_for, run_sql, storage_table


def config_with(dbname: str, tmp_path: Path, storages: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "targets": {"app": {"dsn": dsn_for(dbname), "storages": list(storages)}},
        "storages": storages,
        **extra,
    }


def test_an_encrypted_backup_to_azure_is_copied_to_gcs_and_restores_from_there(
    pg_database: str, tmp_path: Path, make_context: Any, azure_container: StorageConfig, gcs_bucket: StorageConfig
) -> None:
    run_sql(
        pg_database,
        "CREATE TABLE t (id int, note text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
    )
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "age.key"
    key.write_text(str(identity))
    ctx = make_context(
        config_with(
            pg_database,
            tmp_path,
            {"azure": storage_table(azure_container), "gcs": storage_table(gcs_bucket)},
            encryption={"recipients": [str(identity.to_public())], "identity": f"file:{key}"},
        )
    )

    result = backup.run(ctx, target="app")
    restored = restore.run(ctx, target="app", storage="gcs")

    assert result.copies == {"gcs": None}
    assert result.manifest.encrypted
    assert [m.id for m in list_backups(ctx.storage("gcs"), "app")] == [result.manifest.id]
    assert restored.storage == "gcs" and restored.ok and restored.tables_checked == 1


def test_a_failed_copy_keeps_the_backup_and_a_later_copy_run_catches_up(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    offsite = tmp_path / "offsite"
    offsite.write_text("a file where the directory should be")
    storages = {
        "local": {"url": f"file://{tmp_path}/primary"},
        "offsite": {"url": f"file://{offsite}/b", "offsite": True},
    }
    ctx = make_context(config_with(pg_database, tmp_path, storages))

    result = backup.run(ctx, target="app")
    offsite.unlink()
    first = copy.run(ctx, target="app")
    second = copy.run(ctx, target="app")

    assert result.failed_copies.keys() == {"offsite"}
    assert [m.id for m in list_backups(ctx.storage("local"), "app")] == [result.manifest.id]
    assert first.copied == [("app", "offsite", result.manifest.id)] and not first.failed
    assert second.copied == [] and second.skipped == 1


def test_the_cli_says_backup_ok_copy_failed_and_exits_4(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    config = tmp_path / "opskit.toml"
    config.write_text(f"""
[targets.app]
dsn = "{dsn_for(pg_database)}"
storages = ["local", "offsite"]
[storages.local]
url = "file://{tmp_path}/primary"
[storages.offsite]
url = "file://{blocker}/b"
offsite = true
""")

    taken = subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), "backup", "now"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    listed = subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), "backup", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert taken.returncode == 4
    assert "committed to 'local'" in taken.stdout
    assert "backup ok, copy to 'offsite' failed" in taken.stderr
    assert listed.stdout.count("app") == 1


def test_a_copy_refuses_bytes_that_do_not_match_the_manifest(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t AS SELECT generate_series(1, 1000) id;")
    storages = {"local": {"url": f"file://{tmp_path}/primary"}, "second": {"url": f"file://{tmp_path}/second"}}
    config = config_with(pg_database, tmp_path, storages)
    config["targets"]["app"]["storages"] = ["local"]
    ctx = make_context(config)
    manifest = backup.run(ctx, target="app").manifest
    dump = tmp_path / "primary" / manifest.artifact("db").key
    data = bytearray(dump.read_bytes())
    data[10] ^= 0x01
    dump.write_bytes(bytes(data))
    config["targets"]["app"]["storages"] = ["local", "second"]
    ctx = make_context(config)

    report = copy.run(ctx, target="app")

    assert report.failed and "does not match its manifest" in report.failed[0][2]
    assert list_backups(ctx.storage("second"), "app") == []


def test_a_pinned_backup_stays_pinned_on_the_copy(pg_database: str, tmp_path: Path, make_context: Any) -> None:
    from opskit.catalog import is_pinned, pin_key

    run_sql(pg_database, "CREATE TABLE t (id int);")
    storages = {"local": {"url": f"file://{tmp_path}/primary"}, "second": {"url": f"file://{tmp_path}/second"}}
    config = config_with(pg_database, tmp_path, storages)
    config["targets"]["app"]["storages"] = ["local"]
    ctx = make_context(config)
    manifest = backup.run(ctx, target="app").manifest
    with ctx.storage("local").writer(pin_key("app", manifest.id)) as out:
        out.write(b'{"note": "keep for the audit"}')
    config["targets"]["app"]["storages"] = ["local", "second"]
    ctx = make_context(config)

    copy.run(ctx, target="app")

    assert is_pinned(ctx.storage("second"), manifest)
