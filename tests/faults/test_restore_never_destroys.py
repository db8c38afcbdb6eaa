"""Faults: ``restore --replace`` and ``--clean`` leave the destination as it was when they cannot finish.

A corrupt object, a manifest whose stored sha256 is wrong, a dump whose schema cannot be
created: each exits with its code and one line, and the destination's schema and data are
byte-identical to before. A protected target is protected however ``--to`` spells it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opskit.storage.base import StorageConfig
from tests.databases import content_hashes, schema_dump
from tests.faults.helpers import (
    PG_ADMIN_DSN,
    PG_HOST,
    Setup,
    create_database,
    databases_like,
    drop_database,
    local_root,
    one_line_error,
    write_setup,
)


@pytest.fixture
def otherdb() -> Iterator[str]:
    """Yield a pgbench database that differs from the backed-up one (a table and a balance of its own)."""
    name = create_database(1)
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={name}", autocommit=True) as conn:
        conn.execute("CREATE TABLE only_here (note text); INSERT INTO only_here VALUES ('mine')")
        conn.execute("UPDATE pgbench_branches SET bbalance = 42")
    try:
        yield name
    finally:
        for leftover in databases_like(name):
            drop_database(leftover)


def snapshot(database: str) -> tuple[str, dict[str, str]]:
    """Return the schema and the content hashes of ``database``."""
    return schema_dump(database), content_hashes(database)


def backed_up(tmp_path: Path, database: str, storage: StorageConfig, target_extra: str = "") -> tuple[Setup, str]:
    """Take a backup of ``database``; return the setup and the db artifact's key."""
    setup = write_setup(tmp_path, database, storage, target_extra=target_extra)
    result = setup.run("backup", "now", "--target", "app")
    assert result.returncode == 0, result.stderr
    [backup] = setup.backups()
    key = next(a["key"] for a in backup["artifacts"] if a["name"] == "db")  # type: ignore[attr-defined]
    return setup, str(key)


def dsn(database: str, host: str = PG_HOST) -> str:
    return f"postgresql://postgres@{host}:5432/{database}"


def test_replace_of_a_corrupt_backup_exits_5_and_leaves_the_destination_byte_identical(
    tmp_path: Path, database: str, otherdb: str, local_storage: StorageConfig
) -> None:
    setup, key = backed_up(tmp_path, database, local_storage)
    stored = local_root(local_storage) / key
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    before = snapshot(otherdb)

    result = setup.run("restore", "latest", "--to", dsn(otherdb), "--replace")

    assert result.returncode == 5, result.stderr
    one_line_error(result.stderr)
    assert snapshot(otherdb) == before
    assert databases_like(otherdb) == [otherdb]  # no copy left beside it


def test_clean_with_a_wrong_stored_sha256_exits_5_and_cleans_nothing(
    tmp_path: Path, database: str, otherdb: str, local_storage: StorageConfig
) -> None:
    setup, key = backed_up(tmp_path, database, local_storage)
    manifest_path = local_root(local_storage) / key.rsplit("/", 1)[0] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == "db":
            artifact["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    before = snapshot(otherdb)

    result = setup.run("restore", "latest", "--to", dsn(otherdb), "--clean")

    assert result.returncode == 5, result.stderr
    assert "sha256" in one_line_error(result.stderr)
    assert snapshot(otherdb) == before


def test_replace_with_two_jobs_of_a_dump_whose_schema_cannot_be_created_exits_4_and_leaves_the_destination(
    tmp_path: Path, database: str, otherdb: str, local_storage: StorageConfig
) -> None:
    role = f"opskit_t_gone_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role}")
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as conn:
        conn.execute(f"CREATE TABLE owned (id int); ALTER TABLE owned OWNER TO {role}")
    setup, _ = backed_up(tmp_path, database, local_storage)
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as conn:
        conn.execute("DROP TABLE owned")
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"DROP ROLE {role}")  # the backup's ALTER ... OWNER TO now fails
    before = snapshot(otherdb)

    result = setup.run("restore", "latest", "--to", dsn(otherdb), "--replace", "--jobs", "2")

    assert result.returncode == 4, result.stderr
    assert role in result.stderr
    one_line_error(result.stderr)
    assert snapshot(otherdb) == before
    assert databases_like(otherdb) == [otherdb]


def test_a_protected_target_spelled_as_another_dsn_still_needs_confirmation(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup, _ = backed_up(tmp_path, database, local_storage, target_extra="protected = true")
    before = snapshot(database)

    result = setup.run("restore", "latest", "--to", dsn(database, host="localhost"), "--replace")

    assert result.returncode == 2, result.stderr
    assert "target 'app' is protected" in one_line_error(result.stderr)
    assert snapshot(database) == before


def test_clean_over_a_database_with_a_table_the_backup_lacks_succeeds_and_names_the_table(
    tmp_path: Path, database: str, otherdb: str, local_storage: StorageConfig
) -> None:
    setup, _ = backed_up(tmp_path, database, local_storage)

    result = setup.run("restore", "latest", "--to", dsn(otherdb), "--clean")

    assert result.returncode == 0, result.stderr
    assert "None" not in result.stdout + result.stderr
    assert "tables the backup does not hold were left as they were: public.only_here" in result.stdout
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={otherdb}") as conn:
        assert conn.execute("SELECT note FROM only_here").fetchall() == [("mine",)]
        assert conn.execute("SELECT sum(bbalance) FROM pgbench_branches").fetchone() == (0,)


def test_replace_swaps_in_the_restored_copy_and_keep_old_keeps_the_old_database(
    tmp_path: Path, database: str, otherdb: str, local_storage: StorageConfig
) -> None:
    setup, _ = backed_up(tmp_path, database, local_storage)
    before = snapshot(otherdb)
    session = psycopg.connect(f"host={PG_HOST} user=postgres dbname={otherdb}")  # terminated at the swap

    result = setup.run("restore", "latest", "--to", dsn(otherdb), "--replace", "--keep-old", "--json")

    assert result.returncode == 0, result.stderr
    kept = json.loads(result.stdout)["kept_old"]
    assert kept.startswith(otherdb + "_opskit_old_")
    assert snapshot(kept) == before
    assert snapshot(otherdb) == snapshot(database)
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
