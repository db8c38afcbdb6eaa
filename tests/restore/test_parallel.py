"""``restore --jobs N`` against the local PostgreSQL: data loaded over N connections, or spooled.

Backups opskit writes (table data and sequence values) take the loader route: schema from
the TOC, each table's COPY data split over N connections, then indexes. Archives with large
objects take the spool route: ``pg_restore --jobs N`` on a spool file. ``--clean`` restores in
one transaction, so on one connection whatever ``--jobs`` says.
Either way the restored database equals the source, and the state directory is left empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from opskit.backup import backup
from opskit.catalog import Manifest
from opskit.core.errors import RestoreFailed
from opskit.pg import copy_loader
from opskit.restore import restore
from tests.databases import content_hashes, dsn_for, local_config, run_sql, schema_dump
from tests.pgcluster import ScramCluster
from tests.servers import REPO_ROOT

AWKWARD_SQL = (REPO_ROOT / "tests" / "data" / "awkward.sql").read_text(encoding="utf-8")
# The same database without its large object: what most opskit backups look like.
WITHOUT_LARGE_OBJECTS = "\n".join(line for line in AWKWARD_SQL.splitlines() if "files" not in line)
TRICKY_ROWS = r"""
CREATE TABLE tricky (id int PRIMARY KEY, body text);
INSERT INTO tricky VALUES
  (1, E'\\.'), (2, E'line one\nline two'), (3, E'tab\there'), (4, E'back\\slash'), (5, NULL), (6, ''),
  (7, E'\\.\n\\.'), (8, 'COPY public.tricky (id, body) FROM stdin;');
CREATE TABLE wide (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tricky_id int REFERENCES tricky, pad text);
INSERT INTO wide (tricky_id, pad) SELECT 1 + g % 8, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;
"""


def sequence_values(dbname: str) -> dict[str, Any]:
    with psycopg.connect(dsn_for(dbname)) as conn:
        rows = conn.execute("SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences").fetchall()
    return dict(rows)


def distinct_loads(dbname: str, table: str) -> int:
    """Return how many transactions inserted the rows of ``table`` (one per COPY)."""
    with psycopg.connect(dsn_for(dbname)) as conn:
        row = conn.execute(f"SELECT count(DISTINCT xmin::text) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def backed_up(pg_database: str, tmp_path: Path, make_context: Any, statements: str) -> Any:
    """Run ``statements`` in the database, back it up to local disk, and return the context."""
    run_sql(pg_database, statements)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    backup.run(ctx, target="app")
    return ctx


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut COPY data into 64 KiB blocks, so even test-sized tables are split between connections."""
    monkeypatch.setattr(copy_loader, "BLOCK_SIZE", 64 * 1024)


def test_a_parallel_restore_loads_every_table_over_several_connections_and_reproduces_the_database(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    ctx = backed_up(pg_database, tmp_path, make_context, WITHOUT_LARGE_OBJECTS + TRICKY_ROWS)

    restored = restore.run(ctx, target="app", jobs=3)

    assert restored.route == "loader"
    assert restored.ok, restored.mismatches
    assert set(restored.phases) == {"schema", "data", "indexes", "verify"}
    assert schema_dump(restored.database) == schema_dump(pg_database)
    assert content_hashes(restored.database) == content_hashes(pg_database)
    assert sequence_values(restored.database) == sequence_values(pg_database)
    assert list((tmp_path / "state").iterdir()) == []


def test_one_large_table_is_loaded_by_more_than_one_connection(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    ctx = backed_up(
        pg_database,
        tmp_path,
        make_context,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 200000) g;",
    )

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.ok and restored.route == "loader"
    assert distinct_loads(restored.database, "big") >= 2
    # The row-count check used what PostgreSQL reported for the COPYs instead of scanning again.
    assert restored.rows_loaded == {"public.big": 200000}


def test_an_archive_with_large_objects_is_restored_from_a_spool_file_that_is_removed_after(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = backed_up(pg_database, tmp_path, make_context, AWKWARD_SQL)

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.route == "spool" and restored.ok
    assert {"fetch", "restore"} <= set(restored.phases)
    assert content_hashes(restored.database) == content_hashes(pg_database)
    assert list((tmp_path / "state").iterdir()) == []


def test_a_clean_restore_with_jobs_streams_in_one_transaction(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = backed_up(
        pg_database,
        tmp_path,
        make_context,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);",
    )
    run_sql(pg_database, "INSERT INTO t VALUES (1000);")

    restored = restore.run(ctx, target="app", to="app", clean=True, jobs=2)

    assert restored.route == "stream" and restored.jobs == 1 and restored.ok
    with psycopg.connect(dsn_for(pg_database)) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (100,)


CAPPED = """
CREATE FUNCTION under_cap(v int) RETURNS boolean LANGUAGE sql IMMUTABLE
  AS $$ SELECT coalesce(v < nullif(current_setting('app.cap', true), '')::int, true) $$;
CREATE TABLE capped (id int PRIMARY KEY CHECK (public.under_cap(id)));
INSERT INTO capped SELECT generate_series(1, 5000);
CREATE TABLE fine (id int);
INSERT INTO fine SELECT generate_series(1, 10);
"""


def test_a_failing_copy_stops_the_restore_names_the_table_and_drops_the_new_database(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sql(pg_database, CAPPED)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest
    # Every session of the restore sees app.cap = 100, so rows from 100 on break the CHECK.
    monkeypatch.setenv("PGOPTIONS", "-c app.cap=100")

    with pytest.raises(
        RestoreFailed, match=r'COPY failed for table "capped": ERROR:  new row .* violates check constraint'
    ):
        restore.run(ctx, target="app", jobs=2)

    with psycopg.connect(dsn_for(pg_database)) as conn:
        assert (
            conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (restore.default_database_name(manifest),)
            ).fetchone()
            is None
        )
    assert list((tmp_path / "state").iterdir()) == []


def test_without_exit_on_error_a_failing_copy_is_reported_and_the_other_tables_load(
    pg_database: str, tmp_path: Path, make_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sql(pg_database, CAPPED)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest
    monkeypatch.setenv("PGOPTIONS", "-c app.cap=100")

    result = restore.restore_to_new_database(ctx, manifest, "local", ctx.target("app"), jobs=2, exit_on_error=False)

    assert any(
        line.startswith('pg_restore: error: COPY failed for table "capped": ERROR:')
        for line in result.pg_restore_errors
    )
    assert [m.table for m in result.mismatches] == ["public.capped"]
    with psycopg.connect(dsn_for(result.database)) as conn:
        assert conn.execute("SELECT count(*) FROM fine").fetchone() == (10,)


def encrypted_config(pg_database: str, tmp_path: Path) -> dict[str, Any]:
    key = tmp_path / "age.key"
    subprocess.run([sys.executable, "-m", "opskit", "keygen", "--out", str(key)], check=True, capture_output=True)
    recipient = next(line.split(": ")[1] for line in key.read_text().splitlines() if line.startswith("# public key"))
    config = local_config(pg_database, tmp_path / "backups")
    config["encryption"] = {"recipients": [recipient], "identity": f"file:{key}"}
    return config


def test_an_encrypted_backup_takes_the_loader_route_and_a_failing_copy_keeps_its_own_error(
    pg_database: str, tmp_path: Path, make_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loader's errors are raised inside the decryption stream: they must come out unchanged.
    run_sql(pg_database, CAPPED)
    ctx = make_context(encrypted_config(pg_database, tmp_path))
    backup.run(ctx, target="app")

    restored = restore.run(ctx, target="app", jobs=2)
    assert restored.ok and restored.route == "loader"
    run_sql(pg_database, f'DROP DATABASE "{restored.database}"')

    monkeypatch.setenv("PGOPTIONS", "-c app.cap=100")
    with pytest.raises(RestoreFailed, match=r'COPY failed for table "capped"') as failure:
        restore.run(ctx, target="app", jobs=2)
    assert failure.value.exit_code == 4


def test_a_latin1_database_round_trips_through_the_loader(pg_database: str, tmp_path: Path, make_context: Any) -> None:
    latin1 = pg_database + "_latin1"
    run_sql(
        pg_database, f"CREATE DATABASE \"{latin1}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    )
    try:
        with psycopg.connect(dsn_for(latin1), autocommit=True, client_encoding="UTF8") as conn:
            conn.execute("CREATE TABLE café (id int, nom text)")
            conn.execute("INSERT INTO café VALUES (1, 'crème brûlée'), (2, 'naïve')")
        ctx = make_context(local_config(latin1, tmp_path / "backups"))
        backup.run(ctx, target="app")

        restored = restore.run(ctx, target="app", jobs=2)

        assert restored.ok and restored.route == "loader"
        assert restored.rows_loaded == {"public.café": 2}  # the TOC's names read in the archive's encoding
        with psycopg.connect(dsn_for(restored.database)) as conn:
            assert conn.execute("SELECT nom FROM café ORDER BY id").fetchall() == [("crème brûlée",), ("naïve",)]
        run_sql(pg_database, f'DROP DATABASE "{restored.database}"')
    finally:
        run_sql(pg_database, f'DROP DATABASE IF EXISTS "{latin1}" WITH (FORCE)')


def test_a_database_of_sequences_and_views_only_restores_with_jobs(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = backed_up(
        pg_database,
        tmp_path,
        make_context,
        "CREATE SEQUENCE s START 5; SELECT nextval('s'), nextval('s'); CREATE VIEW v AS SELECT 1 AS one;",
    )

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.ok and restored.route == "loader"
    assert sequence_values(restored.database) == sequence_values(pg_database)


def test_a_server_that_demands_a_password_gets_it_on_every_loading_connection(
    scram_cluster: ScramCluster, tmp_path: Path, make_context: Any
) -> None:
    with scram_cluster.connect() as conn:
        conn.execute('CREATE DATABASE "locked"')
    with scram_cluster.connect("locked") as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 20000) g")
    secret = tmp_path / "db.password"
    secret.write_text(scram_cluster.password + "\n")
    config = local_config("unused", tmp_path / "backups")
    config["targets"]["app"] = {"dsn": scram_cluster.dsn("locked"), "password": f"file:{secret}"}
    ctx = make_context(config)
    backup.run(ctx, target="app")

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.ok and restored.route == "loader" and restored.tables_checked == 1


# --------------------------------------------------------------------------- real schemas (issue 15, case 3)

AWKWARD_LOADER_SQL = (REPO_ROOT / "tests" / "data" / "awkward_loader.sql").read_text(encoding="utf-8")
INHERITANCE = "CREATE TABLE parent(a int); CREATE TABLE child() INHERITS (parent); INSERT INTO child VALUES (1);"


def rewrite_as_old_manifest(pg_database: str, tmp_path: Path) -> None:
    """Make the latest backup's manifest look written before ``row_counts``: inclusive counts, no field."""
    (manifest_path,) = (tmp_path / "backups").glob("app/*/manifest.json")
    data = json.loads(manifest_path.read_text())
    assert data.pop("row_counts") == "only"
    with psycopg.connect(dsn_for(pg_database)) as conn:
        for table in data["tables"]:
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(table["schema"]), sql.Identifier(table["name"])
            )
            row = conn.execute(query).fetchone()
            assert row is not None
            table["rows"] = row[0]
    manifest_path.write_text(json.dumps(data))


def test_a_child_table_s_rows_are_counted_once_so_an_inherited_schema_restores_with_jobs(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = backed_up(pg_database, tmp_path, make_context, INHERITANCE)

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.route == "loader"
    assert restored.ok, restored.mismatches
    assert restored.rows_loaded == {"public.parent": 0, "public.child": 1}
    assert content_hashes(restored.database) == content_hashes(pg_database)


def test_the_backup_counts_each_table_s_own_rows_and_says_so(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    backed_up(pg_database, tmp_path, make_context, INHERITANCE)

    (manifest_path,) = (tmp_path / "backups").glob("app/*/manifest.json")
    manifest = Manifest.from_json(manifest_path.read_bytes())

    assert manifest.row_counts == "only" and not manifest.counts_children
    assert {t.qualified: t.rows for t in manifest.tables} == {"public.parent": 0, "public.child": 1}


@pytest.mark.parametrize("jobs", [1, 2])
def test_an_old_manifest_that_counted_children_still_matches_after_a_restore(
    pg_database: str, tmp_path: Path, make_context: Any, jobs: int
) -> None:
    ctx = backed_up(pg_database, tmp_path, make_context, AWKWARD_LOADER_SQL)
    rewrite_as_old_manifest(pg_database, tmp_path)

    restored = restore.run(ctx, target="app", jobs=jobs)

    assert restored.ok, restored.mismatches
    if jobs == 2:
        assert restored.route == "loader"
        assert restored.rows_loaded is not None
        assert restored.rows_loaded["public.parent"] == 2 + 3 + 1 + 1  # its own, child, grandchild, two_parents


def test_a_table_whose_name_holds_a_newline_is_loaded_with_jobs(
    pg_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = backed_up(
        pg_database,
        tmp_path,
        make_context,
        'CREATE TABLE "new\nline" ("a\nb" int); INSERT INTO "new\nline" VALUES (1);',
    )

    restored = restore.run(ctx, target="app", jobs=2)

    assert restored.ok and restored.route == "loader"
    assert restored.rows_loaded == {"public.new\nline": 1}


def test_the_loader_reproduces_a_database_of_awkward_schemas(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    ctx = backed_up(pg_database, tmp_path, make_context, AWKWARD_LOADER_SQL + WITHOUT_LARGE_OBJECTS)

    restored = restore.run(ctx, target="app", jobs=3)

    assert restored.route == "loader"
    assert restored.ok, restored.mismatches
    assert schema_dump(restored.database) == schema_dump(pg_database)
    assert content_hashes(restored.database) == content_hashes(pg_database)
    assert sequence_values(restored.database) == sequence_values(pg_database)
    assert list((tmp_path / "state").iterdir()) == []


def test_index_builds_get_memory_sized_from_the_dump_within_bounds() -> None:
    from opskit.restore.parallel import index_build_options

    mib = 1024 * 1024

    assert index_build_options(10 * mib, 2) == "-c synchronous_commit=off -c maintenance_work_mem=64MB"
    assert index_build_options(2048 * mib, 2) == "-c synchronous_commit=off -c maintenance_work_mem=256MB"
    assert index_build_options(100_000 * mib, 2) == "-c synchronous_commit=off -c maintenance_work_mem=512MB"
