"""``opskit restore`` never half-changes a destination, and never picks one the user did not name.

- ``--clean`` is one transaction: a DROP that fails (a view depends on a table) or an interrupt
  (SIGTERM mid-restore) leaves every table, row, index and constraint of the destination.
- A ``--to`` connection string without ``dbname`` is refused; a template database is never a
  destination; the server's ``postgres`` database needs confirmation. Those cases run against a
  throwaway cluster (``tests/pgcluster.py``), never the shared server's own postgres/template1.
- A restore into a new database whose row counts differ from the manifest drops that database,
  so the next restore of the same backup does not stop at "already exists".

The CLI runs as a subprocess (``python -m opskit``), as an operator runs it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import time
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
    cli_env,
    databases_like,
    drop_database,
    local_root,
    one_line_error,
    wait_for,
    write_setup,
)
from tests.faults.test_restore_restart import slow_restore_dir
from tests.pgcluster import ScramCluster, run_as_postgres

PASSWORD_ENV = "PGPASSWORD"  # libpq reads it for an ad-hoc --to DSN on the throwaway cluster

SCHEMA = """
CREATE TABLE t (id int PRIMARY KEY, h text NOT NULL);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) AS i;
CREATE TABLE u (id int PRIMARY KEY, t_id int NOT NULL REFERENCES t (id), note text CHECK (note <> ''));
INSERT INTO u SELECT i, i, 'n' || i FROM generate_series(1, 500) AS i;
CREATE INDEX u_note ON u (note);
CREATE SEQUENCE s;
"""


def _sql(database: str, statements: str) -> None:
    with psycopg.connect(f"host={PG_HOST} user=postgres dbname={database}", autocommit=True) as conn:
        conn.execute(statements.encode())


@contextlib.contextmanager
def _small_database() -> Iterator[str]:
    name = f"opskit_t_dest_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        _sql(name, SCHEMA)
        yield name
    finally:
        for leftover in databases_like(name):
            drop_database(leftover)


@pytest.fixture
def source() -> Iterator[str]:
    """Yield a small database (two tables, a foreign key, an index, a CHECK); drop it and its restores after."""
    with _small_database() as name:
        yield name


@pytest.fixture(scope="module")
def refused_from(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Yield a setup with one backup of a small database, shared by the tests whose restore is refused."""
    root = tmp_path_factory.mktemp("refused")
    with _small_database() as name:
        yield backed_up(root, name, StorageConfig(name="local", url=f"file://{root / 'backups'}"))


def snapshot(database: str) -> tuple[str, dict[str, str]]:
    """Return the schema (tables, indexes, constraints, views) and the content hashes of ``database``."""
    return schema_dump(database), content_hashes(database)


def dsn(database: str) -> str:
    return f"host={PG_HOST} user=postgres dbname={database}"


def backed_up(tmp_path: Path, database: str, storage: StorageConfig, tools: str = "") -> Setup:
    """Return the setup of target ``app`` on ``database`` with one backup taken (``tools``: a pg_bin_dir)."""
    setup = write_setup(tmp_path, database, storage)
    if tools:
        text = setup.path.read_text().replace("[tools]\n", f'[tools]\npg_bin_dir = "{tools}"\n', 1)
        setup.path.write_text(text)
    taken = setup.run("backup", "now")
    assert taken.returncode == 0, taken.stderr
    return setup


# --------------------------------------------------------------------------- --clean is all or nothing


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_clean_restore_whose_drop_fails_exits_4_and_leaves_every_table_index_and_constraint(
    tmp_path: Path, source: str, local_storage: StorageConfig, jobs: str
) -> None:
    setup = backed_up(tmp_path, source, local_storage)
    _sql(source, "CREATE VIEW vt AS SELECT * FROM t; INSERT INTO t VALUES (20001, 'after the backup')")
    before = snapshot(source)

    result = setup.run("restore", "latest", "--to", dsn(source), "--clean", "--jobs", jobs)

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "cannot drop table public.t because other objects depend on it" in line
    assert f"'{source}' was left as it was" in line
    assert "created was dropped" not in line  # no database was created
    assert snapshot(source) == before
    assert databases_like(source) == [source]


@contextlib.contextmanager
def _small_lock_table(cluster: ScramCluster) -> Iterator[None]:
    """Run the block with the throwaway cluster's lock table at 10 x 100 slots (restarted), then as before.

    Never on the shared server: a restore that exhausts its lock table fails every other
    test's queries meanwhile ("out of shared memory").
    """

    def restart_with(statement: str) -> None:
        with cluster.connect() as conn:
            conn.autocommit = True
            conn.execute(statement)
        log = str(cluster.data_dir.parent / "server.log")  # not our pipes: the server outlives pg_ctl
        run_as_postgres(
            [f"{cluster.bin_dir}/pg_ctl", "-D", str(cluster.data_dir), "-l", log, "-w", "-t", "60", "restart"]
        )

    restart_with("ALTER SYSTEM SET max_locks_per_transaction = 10")
    try:
        yield
    finally:
        restart_with("ALTER SYSTEM RESET max_locks_per_transaction")


def test_a_clean_restore_past_the_servers_lock_table_rolls_back_and_names_replace_as_the_way_out(
    tmp_path: Path, source: str, local_storage: StorageConfig, scram_cluster: ScramCluster
) -> None:
    # One transaction locks every table, sequence, index and TOAST table it drops and creates:
    # 300 tables are more than a lock table of 10 x 100 holds. Made 50 per transaction here.
    for first in range(0, 300, 50):
        _sql(
            source,
            f"DO $$ BEGIN FOR i IN {first}..{first + 49} LOOP "
            "EXECUTE format('CREATE TABLE m%s (id serial PRIMARY KEY, v text)', i); END LOOP; END $$",
        )
    setup = backed_up(tmp_path, source, local_storage)
    target = f"opskit_t_locks_{secrets.token_hex(3)}"
    with scram_cluster.connect() as conn:
        conn.autocommit = True
        conn.execute(f'CREATE DATABASE "{target}"')
    try:
        assert _restore_on_cluster(setup, scram_cluster, f" dbname={target}").returncode == 0
        with _small_lock_table(scram_cluster):
            result = _restore_on_cluster(setup, scram_cluster, f" dbname={target}", "--clean", "--yes")
        with scram_cluster.connect(target) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    finally:
        with scram_cluster.connect() as conn:
            conn.autocommit = True
            conn.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert f"'{target}' was left as it was" in line
    assert "restore with --replace (a new database, swapped in once it is proven)" in line
    assert tables == (302,)  # the 300, t and u: nothing dropped


def test_a_clean_restore_interrupted_by_sigterm_exits_130_and_leaves_the_destination(
    tmp_path: Path, source: str, local_storage: StorageConfig
) -> None:
    # About 8 MB of dump that a throttled pg_restore reads at 1 MiB/s: seconds of restore to interrupt.
    _sql(source, "CREATE TABLE big AS SELECT i, md5(i::text) AS h FROM generate_series(1, 200000) AS i")
    slow = slow_restore_dir(tmp_path, bytes_per_second=1024 * 1024)
    setup = backed_up(tmp_path, source, local_storage, tools=str(slow))
    _sql(source, "INSERT INTO u VALUES (501, 1, 'after the backup')")
    before = snapshot(source)

    process = subprocess.Popen(
        setup.argv("restore", "latest", "--to", dsn(source), "--clean", "--yes"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        wait_for(lambda: _restoring(source), timeout=60, what="pg_restore connected to the destination")
        time.sleep(2)  # the drops are done and part of the data is in: what a half-cleaned run left before
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    wait_for(lambda: not _restoring(source), timeout=30, what="the restore's session to end")
    assert snapshot(source) == before


def _restoring(database: str) -> bool:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_restore'",
            (database,),
        ).fetchone()
    return bool(row and row[0])


# --------------------------------------------------------------------------- destinations never guessed


def _on_cluster(cluster: ScramCluster, dsn_text: str) -> str:
    return f"host={cluster.host} port={cluster.port} user={cluster.user}" + dsn_text


def _restore_on_cluster(
    setup: Setup, cluster: ScramCluster, dsn_text: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    """Run ``restore latest --to <cluster> DSN_TEXT FLAGS --no-owner`` with the cluster's password; return the result.

    ``--no-owner``: the cluster has no role postgres, without it a restore would fail for that.
    """
    return setup.run(
        "restore",
        "latest",
        "--to",
        _on_cluster(cluster, dsn_text),
        *flags,
        "--no-owner",
        env={PASSWORD_ENV: cluster.password},
    )


def _cluster_tables(cluster: ScramCluster, database: str) -> list[str]:
    with cluster.connect(database) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return [row[0] for row in rows]


def test_a_to_service_without_dbname_is_refused_saying_the_service_file_is_not_read(refused_from: Setup) -> None:
    result = refused_from.run("restore", "latest", "--to", "service=opskit_no_such_service")

    assert result.returncode == 2, result.stderr
    assert one_line_error(result.stderr).startswith(
        "opskit: error: the --to connection string names no database itself "
        "(a service's dbname in pg_service.conf is not read); name the database with dbname="
    )


def test_a_to_dsn_that_names_no_database_is_refused_with_exit_2(
    refused_from: Setup, scram_cluster: ScramCluster
) -> None:
    setup = refused_from
    with scram_cluster.connect() as conn:
        before = [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]

    # libpq would pick the database named as the user (here opskit_admin; often postgres).
    result = _restore_on_cluster(setup, scram_cluster, "", "--replace")

    assert result.returncode == 2, result.stderr
    assert one_line_error(result.stderr) == (
        "opskit: error: the --to connection string names no database; "
        "name the database with dbname=... (or .../<database> in a postgresql:// URI)"
    )
    with scram_cluster.connect() as conn:
        assert [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")] == before


@pytest.mark.parametrize("flags", [(), ("--replace", "--yes"), ("--clean", "--yes")], ids=["plain", "replace", "clean"])
def test_template1_is_never_a_destination(
    refused_from: Setup, scram_cluster: ScramCluster, flags: tuple[str, ...]
) -> None:
    setup = refused_from

    result = _restore_on_cluster(setup, scram_cluster, " dbname=template1", *flags)

    assert result.returncode == 2, result.stderr
    assert "database 'template1' on target '--to' is a template database" in one_line_error(result.stderr)
    assert _cluster_tables(scram_cluster, "template1") == []
    with scram_cluster.connect() as conn:
        assert conn.execute("SELECT datistemplate FROM pg_database WHERE datname = 'template1'").fetchone() == (True,)


def test_a_database_marked_as_template_is_never_a_destination(refused_from: Setup) -> None:
    setup = refused_from
    template = f"{setup.database}_tpl"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{template}" IS_TEMPLATE true')
    try:
        result = setup.run("restore", "latest", "--to", dsn(template), "--clean", "--yes")

        assert result.returncode == 2, result.stderr
        assert f"database '{template}' on target '--to' is a template database" in one_line_error(result.stderr)
        with psycopg.connect(dsn(template)) as conn:
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{template}" IS_TEMPLATE false')  # a template cannot be dropped


def test_the_postgres_database_needs_confirmation_like_a_protected_target(
    refused_from: Setup, scram_cluster: ScramCluster
) -> None:
    setup = refused_from

    result = _restore_on_cluster(setup, scram_cluster, " dbname=postgres", "--replace")

    assert result.returncode == 2, result.stderr
    assert one_line_error(result.stderr) == (
        "opskit: error: 'postgres' is the server's maintenance database; restoring into database 'postgres' "
        "needs confirmation; type the database name when asked, or pass --yes"
    )
    assert _cluster_tables(scram_cluster, "postgres") == []
    with scram_cluster.connect() as conn:
        leftovers = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'postgres_opskit_%'").fetchall()
    assert leftovers == []


# --------------------------------------------------------------------------- a copy that differs is removed


def test_a_new_database_whose_row_counts_differ_is_dropped_and_the_next_restore_is_not_refused(
    tmp_path: Path, source: str, local_storage: StorageConfig
) -> None:
    setup = backed_up(tmp_path, source, local_storage)
    (manifest_path,) = local_root(local_storage).glob("app/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    for table in manifest["tables"]:
        if table["name"] == "u":
            table["rows"] = 501
    manifest_path.write_text(json.dumps(manifest))

    for _ in range(2):  # the second run is not stopped by a database the first one left
        result = setup.run("restore", manifest["id"])

        assert result.returncode == 5, result.stderr
        line = one_line_error(result.stderr)
        assert "differs from its manifest in 1 table(s) (public.u: expected 501 rows, got 500 rows)" in line
        assert "_restore_" in line and "was dropped" in line
        assert result.stdout == ""
        assert databases_like(source + "_restore_") == []
