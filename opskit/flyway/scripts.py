"""Migration scripts as Flyway finds them on disk: discovery, per-script ``.conf`` options, Flyway's order.

Follows ``docs/flyway-compat.md`` §3: scripts are found recursively under each location (hidden
directories skipped), named as ``opskit.flyway.names`` parses them, decoded and checksummed as
``opskit.flyway.checksums`` does, and ordered as Flyway's ResolvedMigrationComparator orders them.
Placeholders live in ``opskit.flyway.placeholders``, statement splitting in
``opskit.flyway.statements``.

Nothing in this module touches a database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from opskit.config.migrations import Naming
from opskit.core.errors import ConfigError
from opskit.core.log import get_logger
from opskit.flyway.checksums import checksum_text, decode, strip_bom
from opskit.flyway.names import Version, parse_name, utf16_key

log = get_logger(__name__)


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


def order_key(script: Script) -> tuple[int, Version | None, bytes]:
    """Return the sort key of Flyway's ResolvedMigrationComparator: versioned first, then repeatables."""
    if script.version is not None:
        return (0, script.version, b"")
    return (1, None, utf16_key(script.description))


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
