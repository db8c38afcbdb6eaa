"""dump_toc: the table of contents of real pg_dump archives, read in Python, agrees with pg_restore."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from opskit.pg import toc as dump_toc
from tests.databases import dsn_for, run_sql


def streamed_dump(dbname: str) -> bytes:
    """Return ``pg_dump -Fc -Z0`` of ``dbname`` written to a pipe, as opskit backup runs it."""
    return subprocess.run(["pg_dump", "-Fc", "-Z0", dsn_for(dbname)], capture_output=True, check=True).stdout


@pytest.fixture
def archive(pg_database: str) -> bytes:
    run_sql(
        pg_database,
        """
        CREATE TABLE t (id int PRIMARY KEY, note text);
        INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g;
        CREATE SEQUENCE s START 42;
        CREATE INDEX t_note ON t (note);
        COMMENT ON TABLE t IS 'a comment';
        GRANT SELECT ON t TO PUBLIC;
    """,
    )
    return streamed_dump(pg_database)


def test_the_toc_lists_every_entry_with_pg_restores_sections(archive: bytes) -> None:
    toc = dump_toc.parse(archive)

    by_desc = {(e.desc, e.tag): e for e in toc.entries}
    assert by_desc[("TABLE", "t")].section == "pre-data"
    assert by_desc[("TABLE DATA", "t")].section == "data"
    assert by_desc[("TABLE DATA", "t")].copy_stmt == b"COPY public.t (id, note) FROM stdin;\n"
    assert by_desc[("TABLE DATA", "t")].has_data
    assert by_desc[("SEQUENCE SET", "s")].section == "data"
    assert by_desc[("INDEX", "t_note")].section == "post-data"
    assert by_desc[("CONSTRAINT", "t t_pkey")].section == "post-data"
    # Entries of no section of their own (ACLs, comments) take the section before them.
    assert by_desc[("COMMENT", "TABLE t")].section == "pre-data"
    assert [e.desc for e in toc.data_entries()] == ["TABLE DATA", "SEQUENCE SET"]


def test_the_toc_alone_is_an_archive_pg_restore_reads(archive: bytes, tmp_path: Path) -> None:
    toc = dump_toc.parse(archive)
    head = tmp_path / "toc.dump"
    head.write_bytes(archive[: toc.end])

    listed = subprocess.run(["pg_restore", "--list", str(head)], capture_output=True, text=True, check=True).stdout

    listed_ids = {int(line.split(";")[0]) for line in listed.splitlines() if line and not line.startswith(";")}
    # --list leaves out the entries pg_restore handles itself (encoding, search_path, the database).
    special = {"ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"}
    assert listed_ids == {e.dump_id for e in toc.entries if e.desc not in special}
    assert archive[toc.end : toc.end + 1] == b"\x01"  # the first data block follows (BLK_DATA)


def test_capture_returns_the_toc_once_it_is_complete_and_not_before(archive: bytes) -> None:
    toc = dump_toc.parse(archive)
    capture = dump_toc.TocCapture()
    capture.RETRY_BYTES = 0  # parse again whenever the buffer has grown by half

    results = [capture.feed(archive[i : i + 100]) for i in range(0, len(archive), 100)]

    first = next(i for i, r in enumerate(results) if r is not None)
    assert all(r is None for r in results[:first])
    assert results[first] == toc
    assert toc.end <= (first + 1) * 100 <= toc.end * 3 // 2 + 100


def test_capture_at_the_end_of_a_short_stream_parses_what_it_has(archive: bytes) -> None:
    toc = dump_toc.parse(archive)
    capture = dump_toc.TocCapture()
    capture.RETRY_BYTES = 10**9  # never retry while feeding: only finish() parses
    capture.feed(archive[:10])
    capture.feed(archive[10 : toc.end])

    assert capture.finish() == toc


def test_a_stream_that_stops_inside_the_toc_is_unsupported(archive: bytes) -> None:
    capture = dump_toc.TocCapture()
    capture.feed(archive[:200])

    with pytest.raises(dump_toc.UnsupportedArchive, match="ends inside its table of contents"):
        capture.finish()


def test_other_formats_and_unknown_versions_are_unsupported(archive: bytes) -> None:
    with pytest.raises(dump_toc.UnsupportedArchive, match="no PGDMP header"):
        dump_toc.parse(b"-- plain SQL dump\n" + archive)
    future = archive[:5] + bytes([1, 99, 0]) + archive[8:]
    with pytest.raises(dump_toc.UnsupportedArchive, match=r"version 1\.99\.0"):
        dump_toc.parse(future)
