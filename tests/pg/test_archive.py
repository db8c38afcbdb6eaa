"""TocReader: ``pg_restore --list`` fed a stream says whether it is a readable archive, an empty database's too."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from opskit.pg import tools
from opskit.pg.archive import TocReader
from tests.databases import dsn_for, run_sql


def streamed_dump(dbname: str, *options: str) -> bytes:
    """Return ``pg_dump -Z0`` of ``dbname`` in custom format (or ``options``') written to a pipe, as a backup runs it."""
    argv = ["pg_dump", "-Fc", "-Z0", *options, dsn_for(dbname)]
    return subprocess.run(argv, capture_output=True, check=True).stdout


def listed(data: bytes) -> TocReader:
    """Return the TocReader that ``data`` was written into, in 1 MiB pieces as a backup's read writes them."""
    toc = TocReader(tools.find_tool("pg_restore", 15))
    with toc:
        for start in range(0, len(data), 1 << 20):
            toc.write(data[start : start + (1 << 20)])
    return toc


def test_the_archive_of_an_empty_database_is_readable_with_no_entries_listed(pg_database: str) -> None:
    toc = listed(streamed_dump(pg_database))

    assert toc.readable, toc.describe()
    assert (toc.returncode, toc.entries) == (0, 0)
    assert toc.header_entries is not None and toc.header_entries > 0  # ENCODING, STDSTRINGS, SEARCHPATH
    assert toc.describe().startswith("0 entries (a database without objects:")


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda dump, sql: b"", id="no bytes"),
        pytest.param(lambda dump, sql: b"this is not a pg_dump archive\n" * 100, id="text"),
        pytest.param(lambda dump, sql: dump[:5], id="only the magic"),
        pytest.param(lambda dump, sql: dump[: len(dump) // 3], id="cut inside the header or TOC"),
        pytest.param(lambda dump, sql: sql, id="a plain SQL dump"),
    ],
)
def test_what_is_not_a_whole_archive_head_is_not_readable(
    pg_database: str, spoil: Callable[[bytes, bytes], bytes]
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'x');")
    dump = streamed_dump(pg_database)
    plain = streamed_dump(pg_database, "-Fp")

    toc = listed(spoil(dump, plain))

    assert not toc.readable
    assert toc.returncode != 0
    assert toc.describe().startswith(f"exit {toc.returncode}")


def test_an_empty_databases_archive_cut_short_is_not_readable(pg_database: str) -> None:
    dump = streamed_dump(pg_database)

    toc = listed(dump[: len(dump) - 200])  # the header whole, its last TOC entries cut off

    assert not toc.readable
