"""The table of contents at the head of a pg_dump custom-format archive, read in Python.

A custom-format archive starts with a header and the table of contents (TOC): one entry per
object, with its section (pre-data, data, post-data), its SQL and, for table data, the
``COPY ... FROM stdin;`` statement. The data blocks follow. When pg_dump writes to a pipe, as
``opskit backup`` makes it do, the TOC is complete but records no data offsets.

The parallel restore (``opskit.restore.parallel``) needs the TOC before the data arrives: to write
a TOC-only archive that ``pg_restore --section=pre-data`` and ``--section=post-data`` accept,
and to know which COPY statements the data section will contain. The layout is pg_dump's
``WriteHead``/``WriteToc`` (``src/bin/pg_dump/pg_backup_archiver.c``); archive versions 1.12
(PostgreSQL 9.6 to 11) to 1.16 (17 and later) are understood, anything else is reported as
unsupported so the caller can fall back to pg_restore alone. A new PostgreSQL major whose pg_dump
writes a new archive version is taught here (``NEWEST`` and the fields it adds) and in
:mod:`opskit.pg.commands` (its options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from opskit.pg.encodings import python_codec

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
OLDEST = (1, 12)
NEWEST = (1, 16)
SECTION_NAMES = {1: "none", 2: "pre-data", 3: "data", 4: "post-data"}
# pg_dump writes an index as pg_get_indexdef() does: "CREATE [UNIQUE] INDEX name ON [ONLY] t USING method (...".
INDEX_METHOD = re.compile(rb" USING ([a-z_][a-z0-9_]*) \(")


class NeedMoreBytes(Exception):
    """The buffer ends before the table of contents does."""


class UnsupportedArchive(Exception):
    """Not a custom-format archive, or a version whose TOC layout is not known here."""


@dataclass(frozen=True)
class TocEntry:
    """One table-of-contents entry, with its section resolved as pg_restore resolves it."""

    dump_id: int
    desc: str  # "TABLE", "TABLE DATA", "SEQUENCE SET", "BLOBS", ...
    tag: str
    namespace: str | None
    section: str  # "pre-data", "data" or "post-data"
    has_data: bool  # a data block follows in the archive's data part
    copy_stmt: bytes | None  # as bytes: in the archive's encoding, which need not be UTF-8
    dependencies: tuple[int, ...] = ()  # the dump ids this entry must follow, as pg_dump recorded them
    index_method: str | None = None  # an INDEX entry's access method ("btree", "gin", ...), from its definition


@dataclass(frozen=True)
class ArchiveToc:
    """The parsed head of an archive: version, its entries, and where the TOC ends."""

    version: tuple[int, int, int]
    entries: list[TocEntry] = field(default_factory=list)
    end: int = 0  # bytes from the start of the archive to the end of the TOC

    def data_entries(self) -> list[TocEntry]:
        """Return the entries of the data section, in archive order."""
        return [e for e in self.entries if e.section == "data"]


class _Cursor:
    def __init__(self, buf: bytes | bytearray) -> None:
        self.buf = buf
        self.pos = 0
        self.int_size = 4

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise NeedMoreBytes
        chunk = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        # A sign byte, then int_size bytes, least significant first (pg_dump's WriteInt).
        negative = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if negative else value

    def raw(self) -> bytes | None:
        length = self.int()
        if length < 0:
            return None
        return self.take(length)

    def str(self) -> str | None:
        raw = self.raw()
        return None if raw is None else raw.decode("utf-8", "replace")


def parse(buf: bytes | bytearray) -> ArchiveToc:
    """Parse the header and TOC at the start of ``buf``.

    Returns the ArchiveToc (``end`` is the TOC's length in bytes). Raises NeedMoreBytes when
    ``buf`` stops inside the TOC, and UnsupportedArchive for another format or version.
    """
    cur = _Cursor(buf)
    if cur.take(5) != MAGIC:
        raise UnsupportedArchive("not a pg_dump custom-format archive (no PGDMP header)")
    version = (cur.byte(), cur.byte(), cur.byte())
    if not OLDEST <= version[:2] <= NEWEST:
        raise UnsupportedArchive(f"archive version {'.'.join(map(str, version))} is not one opskit can read")
    cur.int_size = cur.byte()
    offset_size = cur.byte()
    if cur.byte() != FORMAT_CUSTOM:
        raise UnsupportedArchive("not a custom-format archive")
    if version[:2] >= (1, 15):
        cur.byte()  # compression algorithm
    else:
        cur.int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        cur.int()
    for _ in range(3):  # database name, server version, pg_dump version
        cur.str()
    raw_entries = []
    section = "pre-data"
    encoding = "utf-8"
    for _ in range(cur.int()):
        dump_id = cur.int()
        has_data = cur.int() != 0
        cur.str()  # catalog table oid
        cur.str()  # oid
        tag = cur.raw() or b""
        desc = cur.str() or ""
        raw_section = cur.int()
        definition = cur.raw() or b""
        cur.str()  # drop statement
        copy_stmt = cur.raw()
        namespace = cur.raw()
        cur.str()  # tablespace
        if version[:2] >= (1, 14):
            cur.str()  # table access method
        if version[:2] >= (1, 16):
            cur.int()  # relkind
        cur.str()  # owner
        cur.str()  # "false": tables WITH OIDS are gone
        dependencies = []
        while (dependency := cur.raw()) is not None:  # dump ids as decimal strings, ended by a NULL string
            if dependency.isdigit():
                dependencies.append(int(dependency))
        cur.byte()  # data offset flag (custom format's extra TOC field)
        cur.take(offset_size)
        # Entries of no section (ACLs, comments) belong to the section before them, as in pg_restore.
        if SECTION_NAMES.get(raw_section, "none") != "none":
            section = SECTION_NAMES[raw_section]
        if desc == "ENCODING":  # the first entry: names are in the database's encoding
            encoding = python_encoding(definition)
        method = index_method(definition) if desc == "INDEX" else None
        raw_entries.append((dump_id, desc, tag, namespace, section, has_data, copy_stmt, tuple(dependencies), method))
    entries = [
        TocEntry(
            dump_id,
            desc,
            tag.decode(encoding, "replace"),
            None if ns is None else ns.decode(encoding, "replace"),
            section,
            has_data,
            copy_stmt,
            dependencies,
            method,
        )
        for dump_id, desc, tag, ns, section, has_data, copy_stmt, dependencies, method in raw_entries
    ]
    return ArchiveToc(version, entries, cur.pos)


def index_method(definition: bytes) -> str | None:
    """Return the access method of ``CREATE INDEX ... ON t USING gin (...)``, or None when it names none."""
    match = INDEX_METHOD.search(definition)
    return match.group(1).decode("ascii") if match else None


def python_encoding(definition: bytes) -> str:
    """Return the Python codec for an ENCODING entry (``SET client_encoding = 'LATIN1';``); UTF-8 if unknown."""
    match = re.search(rb"'([^']+)'", definition)
    codec = python_codec(match.group(1).decode("ascii", "replace")) if match else None
    # An encoding Python lacks (EUC_TW, MULE_INTERNAL): names are only shown and compared, so approximate.
    return codec or "utf-8"


class TocCapture:
    """Collects the first bytes of an archive stream until its TOC parses.

    ``feed`` returns the ArchiveToc once the TOC is complete (and None before); the bytes
    fed so far stay in ``buffer`` so the caller can pass them on.
    """

    RETRY_BYTES = 256 * 1024

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._next_try = 0

    def feed(self, data: bytes | bytearray | memoryview) -> ArchiveToc | None:
        """Add ``data``; return the TOC when it is complete. Raises UnsupportedArchive."""
        self.buffer += data
        if len(self.buffer) < self._next_try:
            return None  # a large TOC: parse again after a good part more has arrived, not on every write
        try:
            return parse(self.buffer)
        except NeedMoreBytes:
            self._next_try = max(len(self.buffer) + self.RETRY_BYTES, len(self.buffer) * 3 // 2)
            return None

    def finish(self) -> ArchiveToc:
        """Return the TOC at the end of the stream. Raises UnsupportedArchive when it is incomplete."""
        try:
            return parse(self.buffer)
        except NeedMoreBytes:
            raise UnsupportedArchive(
                f"the archive ends inside its table of contents ({len(self.buffer)} bytes)"
            ) from None
