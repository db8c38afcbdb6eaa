"""``opskit restore --clean`` over a database with declarative partitioning and primary keys.

pg_restore --clean drops in the reverse of the archive's order, which drops a partition's primary
key before its parent's, and PostgreSQL refuses that ("cannot drop inherited constraint"). opskit
restores in an order whose drops PostgreSQL accepts (``opskit.pg.clean_order``), still in one
transaction: a restore that fails later leaves every row and constraint of the destination.

The CLI runs as a subprocess (``python -m opskit``), as an operator runs it.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from opskit.storage.base import StorageConfig
from tests.databases import dsn_for, run_sql
from tests.faults.helpers import one_line_error
from tests.restore.test_restore_destinations import backed_up, dsn, snapshot

# A range-partitioned table with a primary key and a partitioned index, a foreign key from it to
# another table and one to it, and a list-partitioned table whose partition is partitioned again.
SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers SELECT i, 'customer ' || i FROM generate_series(1, 200) AS i;
CREATE TABLE events (
    id bigint NOT NULL, at date NOT NULL, customer_id int NOT NULL REFERENCES customers (id), payload text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_customer ON events (customer_id);
INSERT INTO events SELECT i, date '2024-01-01' + i % 700, 1 + i % 200, md5(i::text) FROM generate_series(1, 5000) AS i;
CREATE TABLE refunds (id int PRIMARY KEY, event_id bigint NOT NULL, event_at date NOT NULL,
    FOREIGN KEY (event_id, event_at) REFERENCES events (id, at));
INSERT INTO refunds SELECT i, i, date '2024-01-01' + i % 700 FROM generate_series(1, 100) AS i;
CREATE TABLE items (id bigint NOT NULL, region text NOT NULL, at date NOT NULL, sku text NOT NULL,
    PRIMARY KEY (id, region, at), UNIQUE (sku, region, at)) PARTITION BY LIST (region);
CREATE TABLE items_eu PARTITION OF items FOR VALUES IN ('eu') PARTITION BY RANGE (at);
CREATE TABLE items_eu_2024 PARTITION OF items_eu FOR VALUES FROM ('2024-01-01') TO ('2026-01-01');
CREATE TABLE items_us PARTITION OF items FOR VALUES IN ('us');
INSERT INTO items SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, date '2024-01-01' + i % 700, 'sku' || i
    FROM generate_series(1, 2000) AS i;
"""


def _one(database: str, query: str) -> object:
    with psycopg.connect(dsn_for(database)) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def test_a_clean_restore_of_partitioned_tables_with_primary_keys_gives_back_the_backups_schema_and_rows(
    tmp_path: Path, pg_database: str, local_storage: StorageConfig
) -> None:
    run_sql(pg_database, SCHEMA)
    setup = backed_up(tmp_path, pg_database, local_storage)
    at_backup = snapshot(pg_database)
    run_sql(
        pg_database,
        "INSERT INTO events VALUES (9001, '2025-06-01', 1, 'after the backup'); DELETE FROM refunds WHERE id > 50;"
        "UPDATE items SET sku = sku || '!' WHERE region = 'eu';"
        "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('not in the backup');",
    )

    result = setup.run("restore", "latest", "--to", dsn(pg_database), "--clean")

    assert result.returncode == 0, result.stderr
    # The tables that hold rows: customers, refunds and the four leaf partitions.
    assert "row counts match the manifest for all 6 tables" in result.stdout
    assert "1 tables the backup does not hold were left as they were: public.kept" in result.stdout
    assert _one(pg_database, "SELECT note FROM kept") == "not in the backup"
    assert _one(pg_database, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0  # every ATTACH ran
    run_sql(pg_database, "DROP TABLE kept")
    assert snapshot(pg_database) == at_backup
    assert list(setup.state_dir.glob("clean-*.list")) == []


def test_a_clean_restore_of_partitioned_tables_that_fails_after_their_drops_exits_4_and_leaves_every_row(
    tmp_path: Path, pg_database: str, local_storage: StorageConfig
) -> None:
    run_sql(pg_database, SCHEMA)
    setup = backed_up(tmp_path, pg_database, local_storage)
    # A view on the partitioned table (not in the backup) makes DROP TABLE events fail: after the
    # drops of its foreign keys, indexes and every partition's primary key.
    run_sql(pg_database, "CREATE VIEW recent AS SELECT * FROM events; INSERT INTO customers VALUES (201, 'late')")
    before = snapshot(pg_database)

    result = setup.run("restore", "latest", "--to", dsn(pg_database), "--clean", "--jobs", "2")

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "cannot drop table public.events because other objects depend on it" in line
    assert f"'{pg_database}' was left as it was" in line
    assert snapshot(pg_database) == before
    assert _one(pg_database, "SELECT count(*) FROM events") == 5000
    assert list(setup.state_dir.glob("clean-*.list")) == []
