"""Script file names as Flyway reads them: versions, the name grammar and how names are stored.

Follows ``docs/flyway-compat.md``: names (§3) ``V<version>__<desc>.sql`` and ``R__<desc>.sql``,
prefixes case-sensitive, suffixes case-insensitive; versions (§2.6) with ``_`` read as ``.``,
parts compared numerically, trailing zeros ignored; the SQL callback event ids a name may
carry instead; and Java's UTF-16 view of text (ordering, and descriptions and script paths
abbreviated as the history table stores them).

Nothing in this module touches a database or the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Literal

from opskit.config.migrations import Naming

_VERSION_SPLIT_RE = re.compile(r"\.(?=\d)")
_DIGITS_RE = re.compile(r"[0-9]+")
# surrogatepass decoding pairs valid halves back into one character; what is left is a lone half.
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")

# Flyway's SQL callback event ids, in the order of its enum (flyway-core api/callback/Event.java).
# A script named after one is a callback, not a migration; opskit/flyway/callbacks.py runs them.
CALLBACK_EVENTS = (
    "beforeMigrate",
    "beforeRepeatables",
    "beforeEachMigrate",
    "beforeEachMigrateStatement",
    "afterEachMigrateStatement",
    "afterEachMigrateStatementError",
    "afterEachMigrate",
    "afterEachMigrateError",
    "afterMigrate",
    "afterMigrateApplied",
    "afterVersioned",
    "afterMigrateError",
    "beforeUndo",
    "beforeEachUndo",
    "beforeEachUndoStatement",
    "afterEachUndoStatement",
    "afterEachUndoStatementError",
    "afterEachUndo",
    "afterEachUndoError",
    "afterUndo",
    "afterUndoError",
    "beforeClean",
    "afterClean",
    "afterCleanError",
    "beforeInfo",
    "afterInfo",
    "afterInfoError",
    "beforeValidate",
    "afterValidate",
    "afterValidateError",
    "beforeBaseline",
    "afterBaseline",
    "afterBaselineError",
    "beforeRepair",
    "afterRepair",
    "afterRepairError",
    "afterMigrateOperationFinish",
    "afterInfoOperationFinish",
    "createSchema",
    "beforeConnect",
    "afterConnect",
)


# --------------------------------------------------------------------------- versions


@total_ordering
class Version:
    """A Flyway ``MigrationVersion``: compared numerically part by part, trailing zeros ignored.

    ``text`` is what Flyway stores and shows (``1_1`` becomes ``1.1``; leading zeros kept);
    ``raw`` keeps the file's own spelling (the JSON ``rawVersion``).
    """

    __slots__ = ("_key", "raw", "text")

    def __init__(self, raw: str) -> None:
        text = raw.replace("_", ".")
        parts = _VERSION_SPLIT_RE.split(text)
        if not text or not all(_DIGITS_RE.fullmatch(part) for part in parts):
            raise ValueError(f"Invalid version containing non-numeric characters: {raw!r}")
        numbers = [int(part) for part in parts]
        while len(numbers) > 1 and numbers[-1] == 0:
            numbers.pop()
        self.raw = raw
        self.text = text
        self._key = tuple(numbers)

    @classmethod
    def parse(cls, raw: str) -> Version:
        """Return the Version of ``raw``. Raises ValueError for anything Flyway calls invalid."""
        return cls(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: Version) -> bool:
        # Missing parts count as 0; trailing zeros were stripped, so plain tuple order is right.
        return self._key < other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------- naming


@dataclass(frozen=True)
class ParsedName:
    """What a file name says: kind, version (None for repeatables) and description."""

    kind: Literal["versioned", "repeatable"]
    version: Version | None
    description: str


def parse_name(filename: str, naming: Naming = Naming()) -> ParsedName | str:
    """Parse a script's file name per ``docs/flyway-compat.md`` §3; return a ParsedName or the reason it is not a migration.

    The reason is one of ``"not sql"`` (no configured suffix), ``"callback"``, ``"baseline
    migration"``, ``"undo migration"`` (``U1__x.sql``, Flyway Teams; Community ignores it) or a
    message saying why the name is invalid.
    """
    lowered = filename.lower()
    suffix = next((s for s in naming.suffixes if lowered.endswith(s.lower())), None)
    if suffix is None:
        return "not sql"
    stem = filename[: len(filename) - len(suffix)]
    # The longest matching prefix wins among V, R, B and the callback event ids.
    candidates = [naming.versioned_prefix, naming.repeatable_prefix, "B", "U", *CALLBACK_EVENTS]
    prefix = max((p for p in candidates if stem.startswith(p)), key=len, default=None)
    if prefix in CALLBACK_EVENTS:
        return "callback"
    if prefix is None or len(filename) <= len(prefix) + len(suffix):
        return f"the name must start with '{naming.versioned_prefix}' or '{naming.repeatable_prefix}' (case-sensitive)"
    if prefix == "B" and prefix not in (naming.versioned_prefix, naming.repeatable_prefix):
        return "baseline migration"
    rest = stem[len(prefix) :]
    version_text, found, raw_description = rest.partition(naming.separator)
    if prefix == "U" and prefix not in (naming.versioned_prefix, naming.repeatable_prefix):
        # An undo script names the version it undoes; "Upgrade.sql" is just a bad name.
        try:
            Version.parse(version_text)
        except ValueError:
            return (
                f"the name must start with '{naming.versioned_prefix}' or '{naming.repeatable_prefix}' (case-sensitive)"
            )
        return "undo migration"
    description = raw_description.replace("_", " ") if found else ""
    if prefix == naming.repeatable_prefix:
        if version_text:
            return f"a repeatable migration must start with '{naming.repeatable_prefix}{naming.separator}'"
        return ParsedName("repeatable", None, description)
    if not version_text:
        return "the version is empty"
    try:
        version = Version.parse(version_text)
    except ValueError:
        return f"invalid version '{version_text}'"
    return ParsedName("versioned", version, description)


def utf16_key(text: str) -> bytes:
    """Return a key that orders strings as Java's String.compareTo does (UTF-16 code units)."""
    return text.encode("utf-16-be", "surrogatepass")


def utf16_len(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units, as Java counts it."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf16_cut(text: str, start: int, end: int | None = None) -> str:
    """Return Java's ``text.substring(start, end)`` as the JDBC driver stores it.

    Units are UTF-16; half of a surrogate pair left at either end becomes ``?``, which is what
    Java's UTF-8 encoder (and so PostgreSQL's column) makes of a lone surrogate.
    """
    units = text.encode("utf-16-le", "surrogatepass")
    piece = units[start * 2 : None if end is None else end * 2].decode("utf-16-le", "surrogatepass")
    return _LONE_SURROGATE_RE.sub("?", piece)


def abbreviate_description(description: str) -> str:
    """Return the description as stored: over 200 UTF-16 units becomes the first 197 plus ``...``."""
    if utf16_len(description) <= 200:
        return description
    return utf16_cut(description, 0, 197) + "..."


def abbreviate_script(script: str) -> str:
    """Return the script path as stored: over 1000 units becomes ``...`` + ``script.substring(3, 1000)``."""
    if utf16_len(script) <= 1000:
        return script
    return "..." + utf16_cut(script, 3, 1000)
