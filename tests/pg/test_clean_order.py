"""clean_order: the entries of real pg_dump archives in an order whose ``pg_restore --clean`` drops PostgreSQL accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from opskit.pg import clean_order
from opskit.pg import toc as dump_toc
from tests.databases import run_sql
from tests.pg.test_toc import streamed_dump

PARTITIONED = """
CREATE TABLE customers (id int PRIMARY KEY);
CREATE TABLE events (id bigint, at date, customer_id int REFERENCES customers (id), PRIMARY KEY (id, at))
    PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_customer ON events (customer_id);
"""

SUBPARTITIONED = """
CREATE TABLE items (id bigint, region text, at date, PRIMARY KEY (id, region, at)) PARTITION BY LIST (region);
CREATE TABLE items_eu PARTITION OF items FOR VALUES IN ('eu') PARTITION BY RANGE (at);
CREATE TABLE items_eu_2024 PARTITION OF items_eu FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE items_us PARTITION OF items FOR VALUES IN ('us');
"""


def constraint_order(entries: list[dump_toc.TocEntry]) -> list[str]:
    """Return the tags of the CONSTRAINT entries in ``entries``' order."""
    return [entry.tag for entry in entries if entry.desc == "CONSTRAINT"]


def test_partitions_constraints_come_before_their_parents_when_a_partitioned_table_has_a_primary_key(
    pg_database: str,
) -> None:
    run_sql(pg_database, PARTITIONED)
    toc = dump_toc.parse(streamed_dump(pg_database))

    order = clean_order.drop_safe_order(toc)

    assert order is not None
    assert constraint_order(toc.entries) == [
        "customers customers_pkey",
        "events events_pkey",
        "events_2024 events_2024_pkey",
        "events_2025 events_2025_pkey",
    ]
    assert constraint_order(order) == [
        "customers customers_pkey",
        "events_2024 events_2024_pkey",
        "events_2025 events_2025_pkey",
        "events events_pkey",
    ]
    # Nothing else moves: the data (read from a stream that cannot seek) keeps its order.
    assert [e for e in order if e.desc != "CONSTRAINT"] == [e for e in toc.entries if e.desc != "CONSTRAINT"]
    assert sorted(e.dump_id for e in order) == sorted(e.dump_id for e in toc.entries)


def test_the_deepest_partition_level_comes_first_when_a_partition_is_partitioned_too(pg_database: str) -> None:
    run_sql(pg_database, SUBPARTITIONED)
    toc = dump_toc.parse(streamed_dump(pg_database))

    order = clean_order.drop_safe_order(toc)

    assert order is not None
    assert constraint_order(order) == [
        "items_eu_2024 items_eu_2024_pkey",
        "items_eu items_eu_pkey",
        "items_us items_us_pkey",
        "items items_pkey",
    ]


def test_the_archive_order_is_kept_when_no_partitioned_table_has_a_constraint(pg_database: str) -> None:
    run_sql(
        pg_database,
        "CREATE TABLE t (id int PRIMARY KEY);"
        "CREATE TABLE p (id int, at date) PARTITION BY RANGE (at);"
        "CREATE TABLE p_2024 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
        "CREATE INDEX p_id ON p (id);",
    )
    toc = dump_toc.parse(streamed_dump(pg_database))

    assert clean_order.drop_safe_order(toc) is None


def test_pg_restore_drops_the_parents_constraint_before_its_partitions_when_given_that_order(
    pg_database: str, tmp_path: Path
) -> None:
    run_sql(pg_database, PARTITIONED)
    archive = tmp_path / "db.dump"
    archive.write_bytes(streamed_dump(pg_database))
    order = clean_order.drop_safe_order(dump_toc.parse(archive.read_bytes()))
    assert order is not None
    listing = tmp_path / "order.list"
    listing.write_text(clean_order.list_file_text(order))

    script = subprocess.run(
        ["pg_restore", "--clean", "--if-exists", f"--use-list={listing}", "--file=-", str(archive)],
        capture_output=True,
        text=True,
        check=True,
    )

    drops = [
        line.split(" DROP CONSTRAINT IF EXISTS ")[1] for line in script.stdout.splitlines() if "DROP CONSTRAINT" in line
    ]
    assert drops == [
        "events_customer_id_fkey;",
        "events_pkey;",
        "events_2025_pkey;",
        "events_2024_pkey;",
        "customers_pkey;",
    ]
    assert not script.stderr  # every id of the list is one pg_restore accepts ("line ignored" otherwise)
