"""The backup spine end to end against the local PostgreSQL: backup, list, restore, and nothing lost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opskit.backup import backup
from opskit.catalog import list_backups
from opskit.restore import restore
from tests.databases import content_hashes, dsn_for, local_config, run_sql, schema_dump
from tests.servers import REPO_ROOT

AWKWARD_SQL = (REPO_ROOT / "tests" / "data" / "awkward.sql").read_text(encoding="utf-8")


def opskit(
    config: Path, *args: str, env: dict[str, str] | None = None, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input_text,
        timeout=300,
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opskit.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def awkward_database(pg_database: str) -> str:
    run_sql(pg_database, AWKWARD_SQL)
    return pg_database


def test_backup_then_restore_reproduces_a_database_full_of_awkward_objects(
    awkward_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = make_context(local_config(awkward_database, tmp_path / "backups"))

    result = backup.run(ctx, target="app", labels=["round-trip"])
    restored = restore.run(ctx, selector=result.manifest.id, target="app")

    assert restored.database == f"{awkward_database}_restore_{result.manifest.id.lower().replace('-', '_')}"
    assert restored.ok, restored.mismatches
    assert schema_dump(restored.database) == schema_dump(awkward_database)
    assert content_hashes(restored.database) == content_hashes(awkward_database)


def test_the_manifest_records_the_snapshot_tools_artifacts_and_row_counts(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 42);")
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))

    manifest = backup.run(ctx, target="app", labels=["nightly"]).manifest
    stored = json.loads((tmp_path / "backups" / "app" / manifest.id / "manifest.json").read_text())

    for key in (
        "id",
        "target",
        "snapshot_time",
        "started_at",
        "finished_at",
        "labels",
        "server",
        "tools",
        "artifacts",
        "tables",
    ):
        assert key in stored
    assert stored["labels"] == ["nightly"]
    assert stored["server"]["database"] == pg_database
    assert stored["tools"]["pg_dump"]["major"] >= stored["server"]["major"]
    assert {a["name"] for a in stored["artifacts"]} == {"db", "globals"}
    for artifact in stored["artifacts"]:
        assert set(artifact) >= {"key", "size", "sha256", "plain_size", "plain_sha256"}
        assert (tmp_path / "backups" / artifact["key"]).stat().st_size == artifact["size"]
    assert {"schema": "public", "name": "t", "rows": 42, "fingerprint": None} in stored["tables"]


def test_rows_written_after_the_snapshot_are_not_in_the_counts_or_the_dump(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);")
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest
    run_sql(pg_database, "INSERT INTO t SELECT generate_series(11, 20);")

    restored = restore.run(ctx, selector="latest", target="app")

    assert manifest.tables[0].rows == 10
    assert restored.ok


def test_restore_refuses_a_non_empty_destination_unless_clean(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    backup.run(ctx, target="app")
    run_sql(pg_database, "INSERT INTO t VALUES (2);")

    with pytest.raises(Exception, match="is not empty"):
        restore.run(ctx, target="app", to="app")
    restored = restore.run(ctx, target="app", to="app", clean=True)

    assert restored.ok and restored.database == pg_database
    with psycopg.connect(dsn_for(pg_database)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)


def test_restore_into_a_protected_target_needs_yes(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    config = write_config(
        tmp_path,
        f"""
[targets.app]
dsn = "{dsn_for(pg_database)}"
protected = true
[storages.local]
url = "file://{tmp_path}/backups"
""",
    )
    assert opskit(config, "backup", "now").returncode == 0

    refused = opskit(config, "restore", "latest", "--to", "app", "--clean")
    confirmed = opskit(config, "restore", "latest", "--to", "app", "--clean", "--yes")

    assert refused.returncode == 2
    assert "is protected" in refused.stderr and "--yes" in refused.stderr
    assert confirmed.returncode == 0, confirmed.stderr


def test_the_cli_lists_backups_and_prints_one_summary_line(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    config = write_config(
        tmp_path,
        f"""
[targets.app]
dsn = "{dsn_for(pg_database)}"
[storages.local]
url = "file://{tmp_path}/backups"
""",
    )
    taken = opskit(config, "backup", "now", "--label", "pre-release")
    listed = opskit(config, "backup", "list", "--json")

    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.count("\n") == 1 and "committed to 'local'" in taken.stdout
    backups = json.loads(listed.stdout)
    assert [b["labels"] for b in backups] == [["pre-release"]]


def test_the_emergency_recipe_restores_without_opskit(pg_database: str, tmp_path: Path, make_context: Any) -> None:
    run_sql(
        pg_database,
        "CREATE TABLE t (id int, note text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 100) g;",
    )
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest
    target_db = pg_database + "_recipe"
    run_sql(pg_database, f'CREATE DATABASE "{target_db}"')
    dump = tmp_path / "backups" / manifest.artifact("db").key

    # The README's recipe, verbatim apart from the names.
    subprocess.run(f"zstd -d < '{dump}' | pg_restore --dbname='{dsn_for(target_db)}'", shell=True, check=True)

    with psycopg.connect(dsn_for(target_db)) as conn:
        assert conn.execute("SELECT count(*), max(note) FROM t").fetchone() == (100, "row 99")


@pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")
def test_an_encrypted_backup_restores_with_the_age_cli_and_zstd(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 77);")
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    config = local_config(pg_database, tmp_path / "backups")
    config["encryption"] = {"recipients": [recipient], "identity": f"file:{key}"}
    ctx = make_context(config)
    manifest = backup.run(ctx, target="app").manifest
    dump = tmp_path / "backups" / manifest.artifact("db").key
    target_db = pg_database + "_age"
    run_sql(pg_database, f'CREATE DATABASE "{target_db}"')

    assert dump.name.endswith(".zst.age")
    assert b"CREATE TABLE" not in dump.read_bytes()
    subprocess.run(
        f"age -d -i '{key}' '{dump}' | zstd -d | pg_restore --dbname='{dsn_for(target_db)}'", shell=True, check=True
    )
    restored = restore.run(ctx, target="app")

    with psycopg.connect(dsn_for(target_db)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (77,)
    assert restored.ok


def test_restore_with_the_wrong_identity_fails_before_creating_anything(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int);")
    right, wrong = tmp_path / "right.key", tmp_path / "wrong.key"
    for key in (right, wrong):
        subprocess.run([sys.executable, "-m", "opskit", "keygen", "--out", str(key)], check=True, capture_output=True)
    recipient = next(line.split(": ")[1] for line in right.read_text().splitlines() if line.startswith("# public key"))
    config = local_config(pg_database, tmp_path / "backups")
    config["encryption"] = {"recipients": [recipient], "identity": f"file:{wrong}"}
    ctx = make_context(config)
    backup.run(ctx, target="app")

    with pytest.raises(Exception, match="the configured identity matches none") as failure:
        restore.run(ctx, target="app")

    assert getattr(failure.value, "exit_code", None) == 4
    with psycopg.connect(dsn_for("postgres")) as conn:
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE %s", (pg_database + "_restore_%",)
        ).fetchone()
    assert leftovers == (0,)


def test_a_pg_dump_that_fails_leaves_no_manifest_and_exits_4(pg_database: str, tmp_path: Path) -> None:
    role = f"{pg_database}_reader"
    run_sql(
        pg_database,
        f"""
        CREATE TABLE open_table (id int); CREATE TABLE locked_table (id int);
        CREATE ROLE "{role}" LOGIN; GRANT SELECT ON open_table TO "{role}";
    """,
    )
    try:
        config = write_config(
            tmp_path,
            f"""
[targets.app]
dsn = "postgresql://{role}@127.0.0.1:5432/{pg_database}"
[storages.local]
url = "file://{tmp_path}/backups"
""",
        )
        result = opskit(config, "backup", "now")
        listed = opskit(config, "backup", "list", "--json")
    finally:
        run_sql(pg_database, f'DROP OWNED BY "{role}"; DROP ROLE "{role}";')

    assert result.returncode == 4, result.stderr
    assert "permission denied" in result.stderr
    assert json.loads(listed.stdout) == []
    assert not list((tmp_path / "backups").rglob("manifest.json"))
    assert_only_a_failed_run_record(tmp_path / "backups")


def test_a_pg_dump_killed_mid_stream_leaves_nothing_visible(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, "CREATE TABLE big AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g;")
    real = shutil.which("pg_dump")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "pg_dump"
    # Answers --version like the real one; otherwise streams part of the dump and dies by SIGKILL.
    wrapper.write_text(f"""#!/bin/bash
if [ "$1" = "--version" ]; then exec {real} --version; fi
{real} "$@" | head -c 200000
kill -9 $$
""")
    wrapper.chmod(0o755)
    pg_dumpall = shutil.which("pg_dumpall")
    assert pg_dumpall
    (bin_dir / "pg_dumpall").symlink_to(pg_dumpall)
    config = write_config(
        tmp_path,
        f"""
[tools]
pg_bin_dir = "{bin_dir}"
[targets.app]
dsn = "{dsn_for(pg_database)}"
[storages.local]
url = "file://{tmp_path}/backups"
""",
    )

    result = opskit(config, "backup", "now")

    assert result.returncode == 4, result.stderr
    assert "killed by signal SIGKILL" in result.stderr
    assert_only_a_failed_run_record(tmp_path / "backups")


def assert_only_a_failed_run_record(backups: Path) -> None:
    """Nothing of the failed backup is stored: the one file left is the run's own failure record
    (``<target>/runs/``, which the metrics textfile counts), never an artifact or a temp file."""
    files = [p for p in backups.rglob("*") if p.is_file()]
    assert [p.parent.name for p in files] == ["runs"], files
    assert "-backup-failure-" in files[0].name


def test_an_unwritable_storage_fails_with_exit_3_before_pg_dump_starts(pg_database: str, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = write_config(
        tmp_path,
        f"""
[targets.app]
dsn = "{dsn_for(pg_database)}"
[storages.local]
url = "file://{blocker}/backups"
""",
    )

    result = opskit(config, "backup", "now")

    assert result.returncode == 3
    assert "storage 'local'" in result.stderr


def test_an_unreachable_server_fails_with_exit_3(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"""
[targets.app]
dsn = "postgresql://postgres@127.0.0.1:1/nowhere"
[storages.local]
url = "file://{tmp_path}/backups"
""",
    )

    result = opskit(config, "backup", "now")

    assert result.returncode == 3
    assert result.stderr.startswith("opskit: error: cannot connect to target 'app'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_backups_land_in_s3_and_restore_from_there(
    pg_database: str, tmp_path: Path, make_context: Any, s3_bucket: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1234);")
    config = local_config(pg_database, tmp_path / "backups", storages=["s3"])
    config["storages"] = {
        "s3": {"url": s3_bucket.url, **{k: v for k, v in s3_bucket.options.items() if isinstance(v, str | bool)}}
    }
    ctx = make_context(config)

    manifest = backup.run(ctx, target="app").manifest
    restored = restore.run(ctx, target="app", jobs=2)

    assert [m.id for m in list_backups(ctx.storage("s3"), "app")] == [manifest.id]
    assert restored.ok and restored.tables_checked == 1


def test_a_missing_bucket_fails_with_exit_3_naming_the_storage_before_pg_dump_starts(
    pg_database: str, tmp_path: Path, s3_bucket: Any
) -> None:
    endpoint = s3_bucket.options["endpoint_url"]
    config = write_config(
        tmp_path,
        f"""
[targets.app]
dsn = "{dsn_for(pg_database)}"
storages = ["s3"]
[storages.s3]
url = "s3://no-such-bucket-opskit/backups"
endpoint_url = "{endpoint}"
region = "us-east-1"
""",
    )

    result = opskit(config, "backup", "now")

    assert result.returncode == 3, result.stderr
    assert "storage 's3'" in result.stderr and "no-such-bucket-opskit" in result.stderr
    assert "pg_dump" not in result.stderr


def test_replace_recreates_the_database_so_objects_made_after_the_backup_are_gone(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    run_sql(pg_database, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1);")
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    backup.run(ctx, target="app")
    run_sql(pg_database, "CREATE TABLE made_later (id int); DELETE FROM kept;")

    restored = restore.run(ctx, target="app", to="app", replace=True)

    assert restored.ok
    with psycopg.connect(dsn_for(pg_database)) as conn:
        assert conn.execute("SELECT to_regclass('made_later'), (SELECT count(*) FROM kept)").fetchone() == (None, 1)


def test_with_no_config_the_libpq_environment_is_backed_up_into_opskit_backups(
    pg_database: str, tmp_path: Path
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": pg_database}
    env.pop("OPSKIT_CONFIG", None)

    taken = subprocess.run(
        [sys.executable, "-m", "opskit", "backup", "now", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert taken.returncode == 0, taken.stderr
    manifest = json.loads(taken.stdout)
    assert manifest["target"] == "default" and manifest["server"]["database"] == pg_database
    assert (tmp_path / "opskit-backups" / "default" / manifest["id"] / "manifest.json").is_file()
