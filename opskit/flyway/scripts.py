"""Migration scripts as Flyway sees them: names, versions, checksums, placeholders, statements.

Everything here follows ``docs/flyway-compat.md`` so that a database migrated by opskit
looks to Flyway exactly as if Flyway had migrated it:

* names (§3): ``V<version>__<desc>.sql`` and ``R__<desc>.sql``, prefixes case-sensitive,
  suffixes case-insensitive, found recursively under each location;
* versions (§2.6): ``_`` becomes ``.``, parts compared numerically, trailing zeros ignored;
* checksums (§1): strict decoding, Java ``BufferedReader.readLine`` line splitting, the BOM
  dropped from the first line only, one CRC32 over the UTF-8 lines with no separator, read as a
  signed 32-bit int;
* placeholders (§5): ``${name}`` case-insensitive, emulating ``PlaceholderReplacingReader``;
* statements that cannot run in a transaction (§4.1 item 5).

Nothing in this module touches a database.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import total_ordering
from pathlib import Path
from typing import Literal

from opskit.config.migrations import Naming, PlaceholderSyntax
from opskit.core.errors import ConfigError, PlaceholderError, VerificationFailed
from opskit.core.log import get_logger

log = get_logger(__name__)

_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_VERSION_SPLIT_RE = re.compile(r"\.(?=\d)")
_DIGITS_RE = re.compile(r"[0-9]+")
BOM = "\ufeff"
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


# --------------------------------------------------------------------------- checksums


def java_lines(text: str) -> list[str]:
    """Return the lines Java's ``BufferedReader.readLine`` yields for ``text``.

    Lines end at ``\\r\\n``, ``\\r`` or ``\\n`` only (never U+2028, U+0085, VT or FF); a trailing
    terminator adds no empty line; an empty text has no lines.
    """
    if not text:
        return []
    lines = _LINE_BREAK_RE.split(text)
    if text.endswith(("\n", "\r")):
        lines.pop()
    return lines


def checksum_text(text: str) -> int:
    """Return Flyway's checksum of already-decoded ``text`` (``docs/flyway-compat.md`` §1.1 steps 2-5): a signed int32."""
    crc = 0
    for index, line in enumerate(java_lines(text)):
        if index == 0 and line.startswith(BOM):
            line = line[1:]
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return to_int32(crc)


def to_int32(value: int) -> int:
    """Return the unsigned 32-bit ``value`` read as a signed Java int."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


def decode(data: bytes, encoding: str, name: str) -> str:
    """Decode a script strictly, as Java's CharsetDecoder with REPORT does; a BOM is kept.

    Raises VerificationFailed naming the file when the bytes are not valid in ``encoding``.
    """
    codec = "utf-8" if encoding.replace("-", "").replace("_", "").lower() == "utf8" else encoding
    try:
        return data.decode(codec, errors="strict")
    except LookupError as exc:
        raise ConfigError(f"unknown encoding '{encoding}' for {name}", hint="set migrations.encoding") from exc
    except UnicodeDecodeError as exc:
        raise VerificationFailed(
            f"Unable to calculate checksum of {name}: it is not valid {encoding} ({exc.reason} at byte {exc.start})",
            hint="configure the correct file encoding (migrations.encoding or a per-script .conf)",
        ) from exc


def checksum_bytes(data: bytes, encoding: str = "UTF-8", name: str = "<script>") -> int:
    """Return Flyway's checksum of a script's raw bytes. Raises VerificationFailed on malformed input."""
    return checksum_text(decode(data, encoding, name))


# --------------------------------------------------------------------------- placeholders


def replace_placeholders(
    text: str, values: Mapping[str, str], prefix: str = "${", suffix: str = "}", separator: str = ":"
) -> str:
    """Return ``text`` with ``${name}`` replaced, exactly as Flyway's PlaceholderReplacingReader does.

    ``values`` keys must be lowercase (names match case-insensitively). Chars read ahead while
    looking for the prefix are emitted and never re-examined, so ``$${a}`` stays as it is but
    ``$$${a}`` becomes ``$$<value>``. Raises PlaceholderError for a name with no value.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != prefix[0]:
            out.append(char)
            i += 1
            continue
        # Read ahead while the buffer is still a prefix of the placeholder prefix.
        j = 1
        while j < len(prefix) and i + j < n and text[i + j] == prefix[j]:
            j += 1
        if j < len(prefix):
            consumed = min(j + 1, n - i)  # the mismatching char was read too, and is emitted as is
            out.append(text[i : i + consumed])
            i += consumed
            continue
        start = i + j
        end = text.find(suffix, start)
        if end == -1:
            # At EOF Flyway cuts len(suffix) chars off whatever it read.
            name = text[start : n - len(suffix)] if n - start >= len(suffix) else ""
            i = n
        else:
            name = text[start:end]
            i = end + len(suffix)
        out.append(_placeholder_value(name, values, prefix, suffix, separator))
    return "".join(out)


def _placeholder_value(name: str, values: Mapping[str, str], prefix: str, suffix: str, separator: str) -> str:
    key = name.lower()
    if key in values:
        return values[key] or ""
    if key.startswith("flyway" + separator):
        raise PlaceholderError(f"Failed to populate value for default placeholder: {prefix}{name}{suffix}")
    raise PlaceholderError(
        f"No value provided for placeholder: {prefix}{name}{suffix}.  Check your configuration!",
        hint=f"set it under [migrations.placeholders] or as FLYWAY_PLACEHOLDERS_{name.upper()}",
    )


# --------------------------------------------------------------------------- statements


_NON_TRANSACTIONAL = [
    re.compile(r"(CREATE|DROP)\s+(DATABASE|TABLESPACE|SUBSCRIPTION)\b", re.I),
    re.compile(r"ALTER\s+SYSTEM\b", re.I),
    re.compile(r"(CREATE|DROP)\s+(UNIQUE\s+)?INDEX\s+CONCURRENTLY\b", re.I),
    re.compile(r"REINDEX\s+(\([^)]*\)\s*)?(VERBOSE\s+)?(SCHEMA|DATABASE|SYSTEM)\b", re.I),
    # Not in Flyway's list, but PostgreSQL 12+ refuses it inside a transaction just the same.
    re.compile(r"REINDEX\s+(\([^)]*\)\s*)?(VERBOSE\s+)?(INDEX|TABLE)\s+CONCURRENTLY\b", re.I),
    re.compile(r"VACUUM\b", re.I),
    re.compile(r"DISCARD\s+ALL\b", re.I),
]
_ADD_ENUM_VALUE = re.compile(r"ALTER\s+TYPE\s+.*\bADD\s+VALUE\b", re.I | re.S)
_DOLLAR_TAG_RE = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
_LEADING_COMMENTS_RE = re.compile(r"\A(\s+|--[^\n]*(\n|\Z)|/\*.*?\*/)+", re.S)


def split_statements(text: str) -> list[str]:
    """Return the SQL statements of a script, split at top-level semicolons.

    Understands ``--`` and nested ``/* */`` comments, '' and E'' strings, "quoted" identifiers
    and $tag$ dollar quoting. Statements that hold only comments are dropped. A SQL-standard
    ``BEGIN ATOMIC ... END`` body is not understood; such scripts run whole in a transaction.
    """
    statements: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        char = text[i]
        if char == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end + 1
        elif char == "/" and text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif char == "'":
            backslash = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i += 1
            while i < n:
                if backslash and text[i] == "\\":
                    i += 2
                elif text[i] == "'":
                    if text.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif char == '"':
            end = text.find('"', i + 1)
            while end != -1 and text.startswith('""', end):
                end = text.find('"', end + 2)
            i = n if end == -1 else end + 1
        elif char == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            match = _DOLLAR_TAG_RE.match(text, i)
            if match:
                end = text.find(match.group(0), match.end())
                i = n if end == -1 else end + len(match.group(0))
            else:
                i += 1
        elif char == ";":
            statements.append(text[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if strip_leading_comments(s)]


def strip_leading_comments(statement: str) -> str:
    """Return ``statement`` without leading whitespace and comments."""
    return _LEADING_COMMENTS_RE.sub("", statement, count=1)


def can_run_in_transaction(statement: str, server_version_num: int = 150000) -> bool:
    """Return False for statements PostgreSQL refuses inside a transaction block (``docs/flyway-compat.md`` §4.1 item 5)."""
    body = strip_leading_comments(statement)
    if any(pattern.match(body) for pattern in _NON_TRANSACTIONAL):
        return False
    return not (server_version_num < 120000 and _ADD_ENUM_VALUE.match(body))


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


# --------------------------------------------------------------------------- scripts


@dataclass(frozen=True)
class ScriptOptions:
    """Per-script settings from an optional ``<file>.conf`` beside it (``docs/flyway-compat.md`` §3)."""

    execute_in_transaction: bool | None = None
    encoding: str | None = None
    placeholder_replacement: bool | None = None
    should_execute: bool | None = None


@dataclass(frozen=True)
class Script:
    """A migration file found on disk, with its raw text and raw checksum."""

    kind: Literal["versioned", "repeatable"]
    version: Version | None
    description: str
    script: str  # path relative to its location root, '/'-separated: what the history table stores
    path: Path  # absolute path on disk
    text: str  # decoded, not yet placeholder-replaced
    raw_checksum: int
    options: ScriptOptions = field(default_factory=ScriptOptions)

    @property
    def filename(self) -> str:
        """Return the file's own name (``${flyway:filename}``)."""
        return self.path.name

    @property
    def label(self) -> str:
        """Return how messages name this migration: its version, or its description."""
        return self.version.text if self.version else self.description


@dataclass(frozen=True)
class InvalidName:
    """A file that looks like SQL but is not a valid migration name, with the reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Discovery:
    """Everything found under the locations: valid scripts (in Flyway's order) and invalid names."""

    scripts: tuple[Script, ...]
    invalid: tuple[InvalidName, ...] = ()
    callbacks: tuple[Path, ...] = ()
    undo: tuple[Path, ...] = ()


def read_script_conf(path: Path) -> ScriptOptions:
    """Return the options of ``<path>.conf`` beside a script or callback (defaults when there is none)."""
    conf = path.with_name(path.name + ".conf")
    if not conf.is_file():
        return ScriptOptions()
    values: dict[str, str] = {}
    # utf-8-sig: a .conf saved with a BOM must not hide its first key (as Flyway reads it).
    for line in conf.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()

    def flag(key: str) -> bool | None:
        value = values.get(key)
        return None if value is None else value.lower() == "true"

    return ScriptOptions(
        execute_in_transaction=flag("executeInTransaction"),
        encoding=values.get("encoding"),
        placeholder_replacement=flag("placeholderReplacement"),
        should_execute=flag("shouldExecute"),
    )


def _walk(root: Path) -> Iterator[Path]:
    # Hidden directories are skipped, as Flyway's FileSystemScanner does; order is made stable.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def discover(
    locations: Iterable[str | Path], naming: Naming = Naming(), encoding: str = "UTF-8", validate_naming: bool = False
) -> Discovery:
    """Find the migrations under ``locations``, recursively, and return them in Flyway's order.

    Versioned scripts come first by version, then repeatables by description (UTF-16 order).
    Invalid names are logged as a warning, or raise ConfigError with ``validate_naming``.
    Raises ConfigError for a missing location or two migrations with the same version or the
    same repeatable description; VerificationFailed for a file that does not decode.
    """
    scripts: list[Script] = []
    invalid: list[InvalidName] = []
    callbacks: list[Path] = []
    undo: list[Path] = []
    for location in locations:
        root = Path(location).resolve()
        if not root.is_dir():
            raise ConfigError(
                f"migration location {location} is not a directory",
                hint="set migrations.locations (or flyway.locations) to the folder holding V*.sql files",
            )
        for path in _walk(root):
            if path.name.endswith(".conf"):
                continue
            parsed = parse_name(path.name, naming)
            if parsed == "not sql":
                continue
            if parsed == "callback":
                callbacks.append(path)
                continue
            if parsed == "undo migration":
                undo.append(path)
                continue
            if isinstance(parsed, str):
                invalid.append(InvalidName(path, parsed))
                continue
            options = read_script_conf(path)
            relative = path.relative_to(root).as_posix()
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("unreadable migration skipped", path=str(path), error=str(exc))
                continue
            text = strip_bom(decode(data, options.encoding or encoding, relative))
            scripts.append(
                Script(
                    parsed.kind, parsed.version, parsed.description, relative, path, text, checksum_text(text), options
                )
            )
    if invalid:
        names = ", ".join(f"{i.path.name} ({i.reason})" for i in invalid)
        if validate_naming:
            raise ConfigError(
                f"{len(invalid)} SQL migrations were detected but not run because they did not follow the "
                f"filename convention: {names}",
                hint="rename them to V<version>__<description>.sql or R__<description>.sql",
            )
        log.warning("migrations not following the filename convention were skipped", files=names)
    if undo:
        # Flyway Community resolves U scripts as undo migrations and ignores them; so does opskit.
        log.info("undo scripts are ignored (Flyway Teams only)", files=", ".join(p.name for p in undo))
    _check_duplicates(scripts)
    return Discovery(tuple(sorted(scripts, key=order_key)), tuple(invalid), tuple(callbacks), tuple(undo))


def strip_bom(text: str) -> str:
    """Return ``text`` without one leading U+FEFF: Flyway drops it before parsing, as for the checksum."""
    return text.removeprefix(BOM)


def order_key(script: Script) -> tuple[int, Version | None, bytes]:
    """Return the sort key of Flyway's ResolvedMigrationComparator: versioned first, then repeatables."""
    if script.version is not None:
        return (0, script.version, b"")
    return (1, None, utf16_key(script.description))


def utf16_key(text: str) -> bytes:
    """Return a key that orders strings as Java's String.compareTo does (UTF-16 code units)."""
    return text.encode("utf-16-be", "surrogatepass")


def _check_duplicates(scripts: list[Script]) -> None:
    seen_versions: dict[Version, Script] = {}
    seen_descriptions: dict[str, Script] = {}
    for script in scripts:
        if script.version is not None:
            other = seen_versions.setdefault(script.version, script)
            if other is not script:
                # Flyway names the offender whose path sorts first (its scanner's order): "version 1"
                # for V1__a.sql beside sub/V1.0__b.sql.
                first, second = sorted((other, script), key=lambda s: utf16_key(str(s.path)))
                assert first.version is not None
                raise ConfigError(
                    f"Found more than one migration with version {first.version.text}\n"
                    f"Offenders:\n-> {first.path} (SQL)\n-> {second.path} (SQL)",
                    hint="give each versioned migration its own version",
                )
        else:
            other = seen_descriptions.setdefault(script.description, script)
            if other is not script:
                raise ConfigError(
                    f"Found more than one repeatable migration with description {script.description}\n"
                    f"Offenders:\n-> {other.path} (SQL)\n-> {script.path} (SQL)",
                    hint="give each repeatable migration its own description",
                )


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


def script_values(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> dict[str, str]:
    """Return the placeholder values for one script: ``values`` plus ``flyway:filename`` for it."""
    scoped = dict(values)
    scoped[f"flyway{syntax.separator}filename".lower()] = script.filename
    return scoped


def replaces_placeholders(script: Script, syntax: PlaceholderSyntax) -> bool:
    """Return True when placeholders are replaced in ``script`` (global switch, then its .conf)."""
    if script.options.placeholder_replacement is not None:
        return script.options.placeholder_replacement
    return syntax.enabled


def executable_text(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> str:
    """Return the SQL to run: the script with placeholders replaced (when replacement is on)."""
    if not replaces_placeholders(script, syntax):
        return script.text
    return replace_placeholders(
        script.text, script_values(script, values, syntax), syntax.prefix, syntax.suffix, syntax.separator
    )


def resolved_checksums(script: Script, values: Mapping[str, str], syntax: PlaceholderSyntax) -> tuple[int, int | None]:
    """Return (checksum, equivalent checksum) as Flyway resolves them (``docs/flyway-compat.md`` §1.2).

    Versioned: the raw checksum, no equivalent. Repeatable: the checksum after placeholder
    replacement, with the raw checksum as the equivalent that also matches.
    """
    if script.version is not None:
        return script.raw_checksum, None
    if not replaces_placeholders(script, syntax):
        return script.raw_checksum, script.raw_checksum
    return checksum_text(executable_text(script, values, syntax)), script.raw_checksum
