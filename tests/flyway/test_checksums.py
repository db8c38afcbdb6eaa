"""Flyway checksums: the vectors Flyway's own tests asserted, and the closed form of docs/flyway-compat.md §1.1."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opskit.config.migrations import PlaceholderSyntax
from opskit.core.errors import PlaceholderError, VerificationFailed
from opskit.flyway.checksums import checksum_bytes, checksum_text, java_lines, to_int32
from opskit.flyway.placeholders import replace_placeholders, resolved_checksums
from opskit.flyway.scripts import Script

# tests/flyway/flyway-vectors: files whose checksums Flyway's own tests asserted.
VECTORS = Path(__file__).parent / "flyway-vectors"
ASSERTED = {
    "V1.1__View.sql.d2857bd": 64723601,
    "V1.1__View.sql.0e14981": -133051733,
    "V1__First.sql.551b209": 814278929,
    "V1__First.sql.4e54a8a": 454910647,
}


def closed_form(text: str) -> int:
    """Spec 1.1: int32(crc32(utf8(T))), T = text minus one leading BOM, with every CR and LF deleted."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return to_int32(zlib.crc32(text.replace("\r", "").replace("\n", "").encode("utf-8")))


@pytest.mark.parametrize(("name", "expected"), sorted(ASSERTED.items()))
def test_checksums_of_the_vector_files_equal_what_flyways_tests_asserted(name: str, expected: int) -> None:
    assert checksum_bytes((VECTORS / name).read_bytes()) == expected


def test_line_endings_do_not_change_the_checksum_as_flyways_resolver_test_asserted() -> None:
    assert checksum_text("abc\ndef efg\nxyz") == checksum_text("abc\r\ndef efg\nxyz\r\n") == 989464445


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"CREATE TABLE t (id int);\n", 92137680),
        (b"\xef\xbb\xbfCREATE TABLE t (id int);\r\n", 92137680),
        (b"SELECT 1;", 78787420),
        (b"", 0),
        (b"\n\r\n\r", 0),
        (b"\xef\xbb\xbf", 0),
    ],
)
def test_small_vectors_of_the_spec_match(data: bytes, expected: int) -> None:
    assert checksum_bytes(data) == expected


def test_only_the_first_lines_bom_is_removed() -> None:
    assert checksum_text("a\n\ufeffb") != checksum_text("a\nb")
    assert checksum_text("\ufeffa\nb") == checksum_text("a\nb")


def test_java_lines_do_not_split_on_unicode_separators_or_form_feeds() -> None:
    assert java_lines("a\u2028b\x85c\x0bd\x0ce\r\nf\rg\n") == ["a\u2028b\x85c\x0bd\x0ce", "f", "g"]
    assert java_lines("") == []
    assert java_lines("\n") == [""]


def test_trailing_spaces_count() -> None:
    assert checksum_text("SELECT 1; \n") != checksum_text("SELECT 1;\n")


def test_malformed_utf8_is_an_error_naming_the_file() -> None:
    with pytest.raises(VerificationFailed, match=r"V9__bad\.sql"):
        checksum_bytes(b"SELECT '\xff';", name="V9__bad.sql")


def test_another_encoding_is_decoded_then_reencoded_as_utf8() -> None:
    assert checksum_bytes("SELECT 'é';".encode("latin-1"), encoding="ISO-8859-1") == checksum_text("SELECT 'é';")


# Pieces that matter: every line terminator, BOMs, separators Java does not split on, non-BMP chars.
_PIECES = st.sampled_from(["a", "Z", " ", "\t", "\r", "\n", "\r\n", "\ufeff", "é", "\u2028", "\x85", "😀", ";", "$"])
_TEXT = st.one_of(st.lists(_PIECES, max_size=60).map("".join), st.text(max_size=80))


@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_checksum_equals_the_closed_form_of_docs_flyway_compat(text: str) -> None:
    assert checksum_text(text) == closed_form(text)


@settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_checksum_of_bytes_equals_checksum_of_text(text: str) -> None:
    assert checksum_bytes(text.encode("utf-8")) == checksum_text(text)


def test_repeatable_checksum_is_taken_after_placeholder_replacement_with_the_raw_one_as_equivalent() -> None:
    text = "CREATE VIEW v AS SELECT '${a}';\n"
    script = Script("repeatable", None, "v", "R__v.sql", Path("/x/R__v.sql"), text, checksum_text(text))
    checksum, equivalent = resolved_checksums(script, {"a": "X"}, PlaceholderSyntax())
    assert (checksum, equivalent) == (-265984824, 943506442)


def test_versioned_checksum_ignores_placeholders() -> None:
    from opskit.flyway.names import Version

    text = "SELECT '${a}';"
    script = Script("versioned", Version("1"), "x", "V1__x.sql", Path("/x/V1__x.sql"), text, checksum_text(text))
    assert resolved_checksums(script, {"a": "X"}, PlaceholderSyntax()) == (checksum_text(text), None)


def test_placeholders_match_case_insensitively_and_read_ahead_is_not_reexamined() -> None:
    values = {"name": "v"}
    assert replace_placeholders("${NAME} ${Name}", values) == "v v"
    assert replace_placeholders("$${name}", values) == "$${name}"
    assert replace_placeholders("$$${name}", values) == "$$v"
    assert replace_placeholders("cost $5 {x}", values) == "cost $5 {x}"


def test_an_unknown_placeholder_is_an_error_with_flyways_message() -> None:
    with pytest.raises(PlaceholderError, match=r"No value provided for placeholder: \$\{x\}"):
        replace_placeholders("${x}", {})
    with pytest.raises(PlaceholderError, match=r"default placeholder: \$\{flyway:nope\}"):
        replace_placeholders("${flyway:nope}", {})


def test_empty_placeholder_values_are_replaced_with_nothing_and_not_rescanned() -> None:
    assert replace_placeholders("a${e}b", {"e": ""}) == "ab"
    assert replace_placeholders("${a}", {"a": "${b}"}) == "${b}"
