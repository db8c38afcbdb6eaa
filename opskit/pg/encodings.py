"""PostgreSQL character set names and the Python codecs that decode them.

A pg_dump archive names its encoding in its first TOC entry (``SET client_encoding = 'LATIN1';``),
spelled as ``pg_encoding_to_char`` spells it: the database's encoding, or the one given with
``pg_dump --encoding``, so any name of PostgreSQL's character set table may appear, client-only
ones (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004) included. The table follows
https://www.postgresql.org/docs/current/multibyte.html#CHARSET-TABLE; psycopg keeps one too, but
only in a private module.
"""

from __future__ import annotations

# PostgreSQL name -> Python codec. EUC_TW and MULE_INTERNAL have no Python codec. SQL_ASCII means
# "bytes, no encoding declared": ascii, with the caller choosing how to show the other bytes.
PYTHON_CODECS: dict[str, str] = {
    "BIG5": "big5",
    "EUC_CN": "gb2312",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_JP": "euc_jp",
    "EUC_KR": "euc_kr",
    "GB18030": "gb18030",
    "GBK": "gbk",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "JOHAB": "johab",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "LATIN1": "iso8859-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "SJIS": "shift_jis",
    "SQL_ASCII": "ascii",
    "UHC": "cp949",
    "UTF8": "utf-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
}

# PostgreSQL accepts its names in any case, with or without "_" and "-" (pg_char_to_encoding).
_BY_FOLDED_NAME = {name.replace("_", ""): codec for name, codec in PYTHON_CODECS.items()}


def python_codec(pg_name: str) -> str | None:
    """Return the Python codec for the PostgreSQL encoding ``pg_name`` ("LATIN1", "utf8", "ISO-8859-5").

    Returns None for a name PostgreSQL does not have, or one Python cannot decode (EUC_TW, MULE_INTERNAL).
    """
    return _BY_FOLDED_NAME.get(pg_name.replace("_", "").replace("-", "").upper())
