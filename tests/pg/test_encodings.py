"""PostgreSQL encoding names, as archives spell them, to Python codecs."""

from __future__ import annotations

import pytest

from opskit.pg.encodings import PYTHON_CODECS, python_codec
from opskit.pg.toc import python_encoding


@pytest.mark.parametrize(
    ("pg_name", "codec"),
    [("LATIN1", "iso8859-1"), ("UTF8", "utf-8"), ("WIN1252", "cp1252"), ("EUC_JP", "euc_jp"), ("SQL_ASCII", "ascii")],
)
def test_an_archive_encoding_maps_to_its_python_codec(pg_name: str, codec: str) -> None:
    assert python_codec(pg_name) == codec


def test_names_are_folded_as_postgresql_folds_them() -> None:
    assert python_codec("latin1") == python_codec("Latin-1") == "iso8859-1"
    assert python_codec("iso-8859-5") == python_codec("ISO_8859_5") == "iso8859-5"


def test_every_mapped_codec_exists_in_python() -> None:
    for codec in PYTHON_CODECS.values():
        assert "x".encode(codec)


def test_an_encoding_python_lacks_is_read_as_utf8() -> None:
    assert python_codec("EUC_TW") is None
    assert python_codec("MULE_INTERNAL") is None
    assert python_encoding(b"SET client_encoding = 'MULE_INTERNAL';\n") == "utf-8"
    assert python_encoding(b"SET client_encoding = 'LATIN1';\n") == "iso8859-1"
