"""ScriptSplitter: pg_restore's data-section script cut into COPY blocks of whole rows and SQL."""

from __future__ import annotations

import random

import pytest

from opskit.pg.copy_loader import ScriptError, ScriptSplitter, session_settings

ACCOUNTS = b"COPY public.accounts (id, note) FROM stdin;"
EMPTY = b"COPY public.empty (id) FROM stdin;"
PREAMBLE = (
    b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n"
    b"SET statement_timeout = 0;\nSET client_encoding = 'UTF8';\n"
    b"SELECT pg_catalog.set_config('search_path', '', false);\nSET row_security = off;\n\n"
)
# Rows whose text looks like the end marker but is not: COPY escapes a backslash as "\\".
ROWS = [b"%d\tnote %d\n" % (i, i) for i in range(1, 200)] + [b"200\t\\\\.\n", b"201\tends with \\\\.\n", b"202\t\\N\n"]


def script(rows: list[bytes] = ROWS) -> bytes:
    return (
        PREAMBLE
        + b"--\n-- Data for Name: accounts; Type: TABLE DATA\n--\n\n"
        + ACCOUNTS
        + b"\n"
        + b"".join(rows)
        + b"\\.\n\n\n"
        + b"--\n-- Data for Name: empty; Type: TABLE DATA\n--\n\n"
        + EMPTY
        + b"\n\\.\n\n\n"
        + b"SELECT pg_catalog.setval('public.accounts_id_seq', 202, true);\n\n"
        + b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc123\n"
    )


class Collected:
    def __init__(self) -> None:
        self.blocks: list[tuple[bytes, bytes]] = []
        self.sql: list[bytes] = []

    def splitter(self, block_size: int = 1024) -> ScriptSplitter:
        return ScriptSplitter([ACCOUNTS + b"\n", EMPTY + b"\n"], self.add_block, self.sql.append, block_size=block_size)

    def add_block(self, statement: bytes, rows: bytes) -> None:
        self.blocks.append((statement, rows))

    def rows_of(self, statement: bytes) -> bytes:
        return b"".join(rows for s, rows in self.blocks if s == statement)


def split(pieces: list[bytes], block_size: int = 1024) -> Collected:
    collected = Collected()
    splitter = collected.splitter(block_size)
    for piece in pieces:
        splitter.feed(piece)
    splitter.finish()
    return collected


def test_copy_rows_arrive_whole_and_in_order_and_nothing_else_is_taken_for_data() -> None:
    collected = split([script()])

    assert collected.rows_of(ACCOUNTS) == b"".join(ROWS)
    assert all(rows.endswith(b"\n") for _, rows in collected.blocks)


def test_blocks_hold_whole_rows_and_stay_near_the_block_size() -> None:
    collected = split([script()], block_size=256)

    assert len(collected.blocks) > 5
    assert all(len(rows) < 256 + 64 for _, rows in collected.blocks)
    assert collected.rows_of(ACCOUNTS) == b"".join(ROWS)


def test_a_table_without_rows_yields_no_block() -> None:
    collected = split([script()])

    assert [s for s, _ in collected.blocks if s == EMPTY] == []


@pytest.mark.parametrize("seed", range(20))
def test_the_script_cut_anywhere_splits_the_same_as_in_one_piece(seed: int) -> None:
    data = script()
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]

    whole, cut = split([data]), split(pieces)

    assert cut.rows_of(ACCOUNTS) == whole.rows_of(ACCOUNTS)
    assert b"".join(cut.sql) == b"".join(whole.sql)


def test_the_script_fed_byte_by_byte_splits_the_same() -> None:
    data = script()

    one_by_one = split([data[i : i + 1] for i in range(len(data))])

    assert one_by_one.rows_of(ACCOUNTS) == b"".join(ROWS)
    assert b"setval" in b"".join(one_by_one.sql)


def test_sql_between_copies_is_kept_without_psql_meta_commands() -> None:
    sql = b"".join(split([script()]).sql)

    assert b"SELECT pg_catalog.setval('public.accounts_id_seq', 202, true);" in sql
    assert b"SET client_encoding = 'UTF8';" in sql
    assert b"\\restrict" not in sql and b"\\unrestrict" not in sql
    assert b"note 1" not in sql


def test_session_settings_are_the_set_lines_of_the_preamble() -> None:
    assert session_settings(PREAMBLE) == [
        b"SET statement_timeout = 0;",
        b"SET client_encoding = 'UTF8';",
        b"SELECT pg_catalog.set_config('search_path', '', false);",
        b"SET row_security = off;",
    ]


def test_a_copy_statement_the_archive_does_not_list_is_an_error() -> None:
    splitter = Collected().splitter()

    with pytest.raises(ScriptError, match="unexpected COPY statement"):
        splitter.feed(PREAMBLE + b"COPY public.other (id) FROM stdin;\n1\n\\.\n")


def test_a_script_that_stops_inside_a_copy_is_an_error() -> None:
    splitter = Collected().splitter()
    splitter.feed(PREAMBLE + ACCOUNTS + b"\n1\tone\n2\ttw")

    with pytest.raises(ScriptError, match="ends inside the data"):
        splitter.finish()


def test_a_row_larger_than_a_block_travels_whole_in_a_block_of_its_own() -> None:
    big = b"7\t" + b"x" * 5000 + b"\n"
    rows = [b"1\tsmall\n", big, b"8\tsmall\n"]

    collected = split([script(rows)], block_size=256)

    assert collected.rows_of(ACCOUNTS) == b"".join(rows)
    assert any(block == b"1\tsmall\n" + big or block == big for _, block in collected.blocks)


NEWLINE_TABLE = b'COPY public."new\nline" ("a\nb", c) FROM stdin;'
# A table whose name is the first line of the other's: only the whole statement tells them apart.
PREFIX_TABLE = b'COPY public."new'
PREFIX_TABLE_STATEMENT = b'COPY public."new" (x) FROM stdin;'


def test_a_copy_statement_spanning_lines_is_matched_whole_however_the_script_is_cut() -> None:
    data = PREAMBLE + NEWLINE_TABLE + b"\n1\tone\n2\ttwo\n\\.\n\n" + PREFIX_TABLE_STATEMENT + b"\n7\n\\.\n\nSELECT 1;\n"
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        collected = Collected()
        splitter = ScriptSplitter([NEWLINE_TABLE, PREFIX_TABLE_STATEMENT], collected.add_block, collected.sql.append)
        for piece in pieces:
            splitter.feed(piece)
        splitter.finish()

        assert collected.rows_of(NEWLINE_TABLE) == b"1\tone\n2\ttwo\n"
        assert collected.rows_of(PREFIX_TABLE_STATEMENT) == b"7\n"
        assert b"line" not in b"".join(collected.sql)


def test_a_multi_line_copy_statement_the_archive_does_not_list_is_an_error() -> None:
    splitter = ScriptSplitter([NEWLINE_TABLE], lambda s, r: None, lambda t: None)

    with pytest.raises(ScriptError, match="unexpected COPY statement"):
        splitter.feed(PREAMBLE + b'COPY public."new\nother" (x) FROM stdin;\n1\n\\.\n')
