"""``restore --jobs N`` builds a loaded table's indexes beside the load of the tables after it.

The archive holds the tables in name order: ``a_first`` is loaded first and ``z_last`` last,
with ``m_middle`` (most of the rows) between them. A restore that builds post-data only after all
data creates ``a_first``'s indexes in transactions newer than every row; one that schedules as
``pg_restore --jobs`` does creates them before ``z_last``'s rows arrive.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opskit.backup import backup
from opskit.core.errors import RestoreFailed
from opskit.pg import copy_loader
from opskit.pg import toc as dump_toc
from opskit.restore import post_data, restore
from opskit.restore.result import RestoreResult
from tests.databases import content_hashes, dsn_for, local_config, run_sql, schema_dump

SCHEMA = """
CREATE FUNCTION app_key(i int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT i % 97';
CREATE TABLE a_first (id int PRIMARY KEY, k int NOT NULL, pad text, UNIQUE (k, id));
CREATE INDEX a_first_key ON a_first (app_key(id));
COMMENT ON INDEX a_first_key IS 'an expression index, built early';
CREATE TABLE m_middle (id bigint PRIMARY KEY, pad text);
CREATE TABLE p (id int NOT NULL, part int NOT NULL) PARTITION BY LIST (part);
CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);
CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2);
CREATE INDEX p_id ON p (id);
CREATE TABLE z_last (id int PRIMARY KEY, a_id int REFERENCES a_first, pad text);
INSERT INTO a_first SELECT g, g % 13, md5(g::text) FROM generate_series(1, 30000) g;
INSERT INTO m_middle SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 250000) g;
INSERT INTO p SELECT g, 1 + g % 2 FROM generate_series(1, 60000) g;
INSERT INTO z_last SELECT g, 1 + g % 30000, md5(g::text) FROM generate_series(1, 30000) g;
"""
# After the index exists, its function starts refusing a row: the dump holds the new body, so the
# restore's build of a_first_key fails on the row with id 5.
REFUSING_KEY = """
CREATE OR REPLACE FUNCTION app_key(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS
$$BEGIN IF i = 5 THEN RAISE EXCEPTION 'app_key refuses %', i; END IF; RETURN i % 97; END$$;
"""


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut COPY data into 64 KiB blocks, and give every table of a few rows (not an empty one) its early builds."""
    monkeypatch.setattr(copy_loader, "BLOCK_SIZE", 64 * 1024)
    monkeypatch.setattr(post_data, "EARLY_SHARE", 10_000)
    monkeypatch.setattr(post_data, "EARLY_MIN_BYTES", 1)


def created_in(dbname: str, relation: str) -> int:
    """Return the id of the transaction that created ``relation`` (pg_class row's xmin)."""
    with psycopg.connect(dsn_for(dbname)) as conn:
        row = conn.execute("SELECT xmin::text::bigint FROM pg_class WHERE relname = %s", (relation,)).fetchone()
    assert row is not None, relation
    return int(row[0])


def first_load_of(dbname: str, table: str) -> int:
    with psycopg.connect(dsn_for(dbname)) as conn:
        row = conn.execute(f"SELECT min(xmin::text::bigint) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def restored_with_two_jobs(pg_database: str, tmp_path: Path, make_context: Any, sql: str) -> RestoreResult:
    """Run ``sql`` in the database, back it up, restore it with ``--jobs 2``; return the RestoreResult."""
    run_sql(pg_database, sql)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    backup.run(ctx, target="app")
    return restore.run(ctx, target="app", jobs=2)


def test_a_loaded_table_s_indexes_are_built_before_the_last_table_loads_and_the_database_is_reproduced(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    restored = restored_with_two_jobs(pg_database, tmp_path, make_context, SCHEMA)

    assert restored.route == "loader" and restored.ok, restored.mismatches
    # a_first's three builds run one after another (two are constraints), beside m_middle's rows.
    z_rows = first_load_of(restored.database, "z_last")
    assert min(created_in(restored.database, i) for i in ("a_first_pkey", "a_first_k_id_key", "a_first_key")) < z_rows
    # What waits for the end is built there: the foreign key, the partitioned index, the comment.
    assert created_in(restored.database, "p_id") > z_rows
    assert schema_dump(restored.database) == schema_dump(pg_database)
    assert content_hashes(restored.database) == content_hashes(pg_database)
    assert list((tmp_path / "state").iterdir()) == []


def test_a_failing_early_index_build_stops_the_restore_with_postgresql_s_error_and_drops_the_database(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    run_sql(pg_database, SCHEMA + REFUSING_KEY)
    ctx = make_context(local_config(pg_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest

    with pytest.raises(RestoreFailed, match=r"building indexes and constraints .* app_key refuses 5"):
        restore.run(ctx, target="app", jobs=2)

    with psycopg.connect(dsn_for(pg_database)) as conn:
        gone = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (restore.default_database_name(manifest),)
        ).fetchone()
    assert gone is None
    assert list((tmp_path / "state").iterdir()) == []


def archive_toc(pg_database: str, tmp_path: Path, *options: str) -> dump_toc.ArchiveToc:
    dump = tmp_path / "x.dump"
    subprocess.run(["pg_dump", "-Fc", *options, "-f", str(dump), dsn_for(pg_database)], check=True)
    return dump_toc.parse(dump.read_bytes())


def test_only_indexes_and_constraints_of_one_loaded_table_are_built_early(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, SCHEMA)
    toc = archive_toc(pg_database, tmp_path)

    early = {
        statement.split(b" ")[1].decode(): sorted(entry.tag.split(" ")[-1] for entry in entries)
        for statement, entries in post_data.early_entries(toc).items()
    }

    # Not the partitions' indexes: each depends on the partitioned index, built at the end.
    assert early == {
        "public.a_first": ["a_first_k_id_key", "a_first_key", "a_first_pkey"],
        "public.m_middle": ["m_middle_pkey"],
        "public.z_last": ["z_last_pkey"],
    }


def test_rows_loaded_through_the_partition_root_get_no_early_builds(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, SCHEMA)
    toc = archive_toc(pg_database, tmp_path, "--load-via-partition-root")

    early = post_data.early_entries(toc)

    assert sorted(statement.split(b" ")[1] for statement in early) == [
        b"public.a_first",
        b"public.m_middle",
        b"public.z_last",
    ]


def test_what_depends_on_an_early_build_waits_for_it(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, SCHEMA)
    toc = archive_toc(pg_database, tmp_path)
    early_ids = {entry.dump_id for entries in post_data.early_entries(toc).values() for entry in entries}
    rest = [e for e in toc.entries if e.section == "post-data" and e.dump_id not in early_ids]

    needs = post_data.needed(rest, early_ids, toc)

    waiting = {e.desc + " " + e.tag for e in rest if needs[e.dump_id]}

    assert "FK CONSTRAINT z_last z_last_a_id_fkey" in waiting
    assert "COMMENT INDEX a_first_key" in waiting
    assert not any(name.startswith(("INDEX p", "INDEX ATTACH")) for name in waiting)


def test_a_table_needs_a_sixteenth_of_the_dump_and_at_least_4_mib_of_rows_for_early_builds() -> None:
    mib = 1024 * 1024

    assert post_data.early_threshold(0) == 4 * mib
    assert post_data.early_threshold(10 * mib) == 4 * mib
    assert post_data.early_threshold(1024 * mib) == 64 * mib


def test_what_depends_on_an_early_build_is_told_which_builds_it_needs(pg_database: str, tmp_path: Path) -> None:
    run_sql(pg_database, SCHEMA)
    toc = archive_toc(pg_database, tmp_path)
    early = {entry.tag: entry.dump_id for entries in post_data.early_entries(toc).values() for entry in entries}
    rest = [e for e in toc.entries if e.section == "post-data" and e.dump_id not in early.values()]

    needs = post_data.needed(rest, set(early.values()), toc)

    tags = {e.dump_id: e.desc + " " + e.tag for e in rest}
    by_tag = {tags[dump_id]: ids for dump_id, ids in needs.items()}
    assert by_tag["FK CONSTRAINT z_last z_last_a_id_fkey"] == {early["a_first a_first_pkey"]}
    assert by_tag["COMMENT INDEX a_first_key"] == {early["a_first_key"]}
    assert by_tag["INDEX p_id"] == set()


# The archive holds a_owner, b_slow, c_child in that order. b_slow's index cannot finish until the
# foreign key of c_child (on a_owner's primary key) exists: a restore that holds every foreign key
# back until all early builds are done waits out the index's 15 s and fails.
WAITS_FOR_THE_FOREIGN_KEY = """
CREATE FUNCTION fk_built() RETURNS boolean LANGUAGE sql VOLATILE
  AS $$SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'c_child_owner_fk')$$;
CREATE FUNCTION waits_for_fk(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF i = 1 THEN
    FOR n IN 1..150 LOOP EXIT WHEN public.fk_built(); PERFORM pg_sleep(0.1); END LOOP;
    IF NOT public.fk_built() THEN RAISE EXCEPTION 'the foreign key was not built beside this index'; END IF;
  END IF;
  RETURN i;
END$$;
CREATE TABLE a_owner (id int PRIMARY KEY);
CREATE TABLE b_slow (id int NOT NULL);
CREATE TABLE c_child (id int PRIMARY KEY, owner int CONSTRAINT c_child_owner_fk REFERENCES a_owner);
INSERT INTO a_owner SELECT generate_series(1, 1000);
INSERT INTO b_slow SELECT generate_series(1, 1000);
INSERT INTO c_child SELECT g, g FROM generate_series(1, 1000) g;
CREATE INDEX b_slow_waits ON b_slow (waits_for_fk(id));
"""


def test_a_foreign_key_is_built_as_soon_as_its_key_is_and_not_after_another_table_s_long_build(
    pg_database: str, tmp_path: Path, make_context: Any, small_blocks: None
) -> None:
    restored = restored_with_two_jobs(pg_database, tmp_path, make_context, WAITS_FOR_THE_FOREIGN_KEY)

    assert restored.route == "loader" and restored.ok, restored.mismatches
    assert schema_dump(restored.database) == schema_dump(pg_database)


def test_a_table_s_constraints_are_built_first_then_its_gin_and_gist_indexes_then_the_rest(
    pg_database: str, tmp_path: Path
) -> None:
    run_sql(
        pg_database,
        """
        CREATE TABLE docs (id int PRIMARY KEY, body jsonb, box box);
        CREATE INDEX docs_a_btree ON docs (id DESC);
        CREATE INDEX docs_b_gin ON docs USING gin (body);
        CREATE INDEX docs_c_gist ON docs USING gist (box);
        INSERT INTO docs VALUES (1, '{}', '((0,0),(1,1))');
        """,
    )
    toc = archive_toc(pg_database, tmp_path)
    [entries] = post_data.early_entries(toc).values()

    ordered = [entry.tag for entry in sorted(entries, key=post_data.build_order)]

    assert ordered == ["docs docs_pkey", "docs_b_gin", "docs_c_gist", "docs_a_btree"]
    assert {e.tag: e.index_method for e in entries} == {
        "docs docs_pkey": None,
        "docs_a_btree": "btree",
        "docs_b_gin": "gin",
        "docs_c_gist": "gist",
    }
