"""Flyway's own configuration sources for ``[migrations]``: ``flyway.conf``, ``flyway.toml``, ``FLYWAY_*``.

:mod:`opskit.config.migrations` merges these under and over opskit.toml (its docstring gives the
order). Here: the table of Flyway settings opskit understands (Flyway key, opskit.toml key,
kind), which config files Flyway itself would read, how a legacy Java-properties
``flyway.conf`` and a ``flyway.toml`` (with ``[environments.<env>]``) are read, and the
``FLYWAY_*`` variables (Flyway's ConfigUtils.convertKey). Values come back as raw strings or TOML
values keyed by Flyway name; converting and checking them is the caller's.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (Flyway key, opskit.toml key, kind). Kind: str, bool, int, list.
KEYS: tuple[tuple[str, str, str], ...] = (
    ("locations", "locations", "list"),
    ("table", "table", "str"),
    ("schemas", "schemas", "list"),
    ("defaultSchema", "default_schema", "str"),
    ("tablespace", "tablespace", "str"),
    ("baselineOnMigrate", "baseline_on_migrate", "bool"),
    ("baselineVersion", "baseline_version", "str"),
    ("baselineDescription", "baseline_description", "str"),
    ("validateOnMigrate", "validate_on_migrate", "bool"),
    ("outOfOrder", "out_of_order", "bool"),
    ("target", "target", "str"),
    ("ignoreMigrationPatterns", "ignore_migration_patterns", "list"),
    ("installedBy", "installed_by", "str"),
    ("createSchemas", "create_schemas", "bool"),
    ("mixed", "mixed", "bool"),
    ("group", "group", "bool"),
    ("executeInTransaction", "execute_in_transaction", "bool"),
    ("encoding", "encoding", "str"),
    ("sqlMigrationPrefix", "sql_migration_prefix", "str"),
    ("sqlMigrationSeparator", "sql_migration_separator", "str"),
    ("sqlMigrationSuffixes", "sql_migration_suffixes", "list"),
    ("repeatableSqlMigrationPrefix", "repeatable_sql_migration_prefix", "str"),
    ("validateMigrationNaming", "validate_migration_naming", "bool"),
    ("lockRetryCount", "lock_retry_count", "int"),
    ("placeholderReplacement", "placeholder_replacement", "bool"),
    ("placeholderPrefix", "placeholder_prefix", "str"),
    ("placeholderSuffix", "placeholder_suffix", "str"),
    ("placeholderSeparator", "placeholder_separator", "str"),
    ("postgresql.transactional.lock", "transactional_lock", "bool"),
    ("url", "url", "str"),
    ("user", "user", "str"),
    ("password", "password", "str"),
    ("environment", "flyway_environment", "str"),
)
KIND = {flyway: kind for flyway, _, kind in KEYS}
SNAKE = {flyway: snake for flyway, snake, _ in KEYS}


def flyway_files(explicit: tuple[str, ...] | None, environ: Mapping[str, str], cwd: Path, home: Path) -> list[Path]:
    """Return the Flyway config files to read, in order: ``explicit``, else ``$FLYWAY_CONFIG_FILES``, else Flyway's own."""
    if explicit is not None:
        return [Path(p) for p in explicit]
    if environ.get("FLYWAY_CONFIG_FILES"):
        return [Path(p.strip()) for p in environ["FLYWAY_CONFIG_FILES"].split(",") if p.strip()]
    found: list[Path] = []
    for directory in dict.fromkeys((home, cwd)):
        found.append(directory / "flyway.conf")
    for directory in dict.fromkeys((home, cwd)):
        found.extend((directory / "flyway.toml", directory / "flyway.user.toml"))
    return found


def read_conf(path: Path) -> dict[str, Any]:
    """Read a legacy Java-properties ``flyway.conf``: ``flyway.key=value`` lines, # and ! comments."""
    result: dict[str, Any] = {}
    # utf-8-sig: a file saved with a BOM keeps its first key (Flyway reads past a BOM too).
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        while line.endswith("\\") and index < len(lines):  # a property continued on the next line
            line = line[:-1] + lines[index].strip()
            index += 1
        if not line or line.startswith(("#", "!")):
            continue
        match = re.match(r"([^=:\s]+)\s*[=:]?\s*(.*)", line)
        if not match:
            continue
        key, value = match.group(1), match.group(2)
        if key.startswith("flyway."):
            key = key[len("flyway.") :]
            if key in KIND or key.startswith("placeholders."):
                result[key] = value
    return result


def read_toml(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """Read a ``flyway.toml``: ``[flyway]``, ``[flyway.placeholders]``, ``[environments.<env>]``."""
    data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    result: dict[str, Any] = {}
    flyway = data.get("flyway", {})
    _flatten_flyway_table(flyway, result)
    env_name = environ.get("FLYWAY_ENVIRONMENT") or str(flyway.get("environment", "default"))
    environment = data.get("environments", {}).get(env_name, {})
    for key in ("url", "user", "password", "schemas"):
        if key in environment:
            result[key] = environment[key]
    _flatten_flyway_table(environment.get("flyway", {}), result)
    return result


def _flatten_flyway_table(table: Mapping[str, Any], result: dict[str, Any]) -> None:
    for key, value in table.items():
        if key == "placeholders" and isinstance(value, Mapping):
            for name, text in value.items():
                result[f"placeholders.{name}"] = str(text).lower() if isinstance(text, bool) else str(text)
        elif key == "postgresql" and isinstance(value, Mapping):
            lock = value.get("transactional", {})
            if isinstance(lock, Mapping) and "lock" in lock:
                result["postgresql.transactional.lock"] = lock["lock"]
            if "transactional.lock" in value:
                result["postgresql.transactional.lock"] = value["transactional.lock"]
        elif key in KIND:
            result[key] = value


def _env_name(flyway_key: str) -> str:
    return "FLYWAY_" + re.sub(r"(?<!^)(?=[A-Z])", "_", flyway_key).replace(".", "_").upper()


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the Flyway settings found in ``FLYWAY_*`` variables (Flyway's ConfigUtils.convertKey)."""
    result: dict[str, Any] = {}
    for flyway_key in KIND:
        name = _env_name(flyway_key)
        if name in environ:
            result[flyway_key] = environ[name]
    for name, value in environ.items():
        if name.startswith("FLYWAY_PLACEHOLDERS_") and len(name) > len("FLYWAY_PLACEHOLDERS_"):
            result["placeholders." + name[len("FLYWAY_PLACEHOLDERS_") :].lower()] = value
    return result
