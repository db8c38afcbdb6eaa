"""Migration settings: ``[migrations]`` of opskit.toml, an existing Flyway project, ``FLYWAY_*``.

A team can point opskit at its Flyway project unchanged. Sources, lowest precedence first
(each later one overrides the keys it sets; placeholders merge name by name):

1. Flyway's defaults (``docs/flyway-compat.md`` §7);
2. Flyway config files: ``migrations.flyway_config`` if set, else ``$FLYWAY_CONFIG_FILES``, else
   the ones Flyway itself reads from the home and working directories: ``flyway.conf``, then
   ``flyway.toml`` and ``flyway.user.toml`` (later files win, as in Flyway);
3. ``[migrations]`` in opskit.toml (snake_case names of the same settings);
4. ``FLYWAY_*`` environment variables, which also win over files in Flyway
   (command line > environment > files), so a deployment can still override per environment.

Reading Flyway's files and ``FLYWAY_*`` is :mod:`opskit.config.flyway_sources`; ``jdbc:postgresql://`` URLs
are translated to libpq conninfo by :func:`opskit.config.jdbc.jdbc_to_conninfo`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opskit.config.flyway_sources import KEYS, KIND, SNAKE, flyway_files, from_environment, read_conf, read_toml
from opskit.config.jdbc import jdbc_to_conninfo
from opskit.config.schema import Section

ENGINES = ("opskit", "flyway")


@dataclass(frozen=True)
class Naming:
    """The file-name conventions (Flyway defaults)."""

    versioned_prefix: str = "V"
    repeatable_prefix: str = "R"
    separator: str = "__"
    suffixes: tuple[str, ...] = (".sql",)


@dataclass(frozen=True)
class PlaceholderSyntax:
    """Whether and how placeholders are replaced (Flyway's placeholderReplacement/Prefix/Suffix/Separator)."""

    enabled: bool = True
    prefix: str = "${"
    suffix: str = "}"
    separator: str = ":"


@dataclass(frozen=True)
class MigrationSettings:
    """Everything the migration engine needs besides a connection. Defaults are Flyway's."""

    locations: tuple[str, ...] = ("sql",)
    table: str = "flyway_schema_history"
    schemas: tuple[str, ...] = ()
    default_schema: str | None = None
    tablespace: str | None = None
    placeholders: Mapping[str, str] = field(default_factory=dict)  # keys lowercased
    placeholder_syntax: PlaceholderSyntax = field(default_factory=PlaceholderSyntax)
    naming: Naming = field(default_factory=Naming)
    engine: str = "opskit"
    flyway_binary: str = "flyway"
    baseline_on_migrate: bool = False
    baseline_version: str = "1"
    baseline_description: str = "<< Flyway Baseline >>"
    validate_on_migrate: bool = True
    out_of_order: bool = False
    target: str = "latest"
    ignore_migration_patterns: tuple[str, ...] = ("*:future",)
    installed_by: str | None = None
    create_schemas: bool = True
    mixed: bool = False
    group: bool = False
    execute_in_transaction: bool = True
    encoding: str = "UTF-8"
    validate_migration_naming: bool = False
    lock_retry_count: int = 50
    transactional_lock: bool = True
    url: str | None = None  # the Flyway JDBC URL, if one was configured
    user: str | None = None
    password: str | None = None
    environment: str = "default"
    sources: tuple[str, ...] = ()  # where the settings came from, for messages

    @property
    def conninfo(self) -> str | None:
        """Return the Flyway URL (with ``user``) as libpq conninfo, or None when no URL is set."""
        if not self.url:
            return None
        return jdbc_to_conninfo(self.url, self.user)

    def with_overrides(self, **changes: Any) -> MigrationSettings:
        """Return a copy with some fields changed (``target`` from the command line, say)."""
        return replace(self, **changes)


# --------------------------------------------------------------------------- entry points


def parse_settings(section: Section) -> MigrationSettings:
    """Return the settings for ``[migrations]`` of opskit.toml merged with Flyway files and ``FLYWAY_*``.

    Problems are recorded on the section's error collector as ``At 'migrations.key': message``.
    """
    return _build(section, dict(os.environ), Path.cwd(), Path.home())


def default_settings() -> MigrationSettings:
    """Return the settings when opskit.toml has no ``[migrations]``: Flyway files and ``FLYWAY_*`` only.

    Raises ConfigError listing every problem.
    """
    from opskit.config.schema import ConfigErrors

    errors = ConfigErrors()
    settings = _build(Section({}, "migrations", errors), dict(os.environ), Path.cwd(), Path.home())
    errors.raise_if_any(None)
    return settings


def settings_of(config_migrations: Any) -> MigrationSettings:
    """Return ``config.migrations`` when it was parsed, else :func:`default_settings`."""
    if isinstance(config_migrations, MigrationSettings):
        return config_migrations
    return default_settings()


# --------------------------------------------------------------------------- building


def _build(section: Section, environ: Mapping[str, str], cwd: Path, home: Path) -> MigrationSettings:
    values: dict[str, Any] = {}
    placeholders: dict[str, str] = {}
    sources: list[str] = []

    engine = section.str("engine", "opskit")
    if engine not in ENGINES:
        section.errors.add(section.key_path("engine"), f"must be one of {', '.join(ENGINES)}, not '{engine}'")
        engine = "opskit"
    flyway_binary = section.str("flyway_binary", "flyway")

    # 2. Flyway's own config files.
    explicit = section.str_list("flyway_config", ()) if section.has("flyway_config") else None
    for path in flyway_files(explicit, environ, cwd, home):
        if not path.is_file():
            if explicit is not None:
                section.errors.add(section.key_path("flyway_config"), f"names {path}, which does not exist")
            continue
        try:
            loaded = read_toml(path, environ) if path.suffix == ".toml" else read_conf(path)
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            section.errors.add(section.key_path("flyway_config"), f"cannot read {path}: {exc}")
            continue
        _merge(values, placeholders, loaded)
        sources.append(str(path))

    # 3. [migrations] in opskit.toml.
    own: dict[str, Any] = {}
    for flyway_key, snake, kind in KEYS:
        if not section.has(snake):
            continue
        if kind == "bool":
            own[flyway_key] = section.bool(snake)
        elif kind == "int":
            own[flyway_key] = section.int(snake, 50, minimum=-1)
        elif kind == "list":
            own[flyway_key] = list(section.str_list(snake))
        elif flyway_key in _VERSION_KEYS:
            own[flyway_key] = _version_text(section, snake)
        else:
            own[flyway_key] = section.str(snake, None)
    table = section.table("placeholders")
    for name in table.raw:
        value = table.get(name, (str, int, bool), "", "a string")
        own[f"placeholders.{name}"] = str(value).lower() if isinstance(value, bool) else str(value)
    table.finish()
    if own:
        sources.append("opskit.toml [migrations]")
    _merge(values, placeholders, own)

    # 4. FLYWAY_* environment variables.
    from_env = from_environment(environ)
    if from_env:
        sources.append("FLYWAY_* environment")
    _merge(values, placeholders, from_env)
    section.finish()

    return _settings_from(values, placeholders, section, engine, flyway_binary, tuple(sources))


# Keys holding a version, which TOML (and an OPSKIT_* variable, read as TOML) may give as an integer.
_VERSION_KEYS = frozenset({"baselineVersion", "target"})


def _version_text(section: Section, key: str) -> str | None:
    """Return the version at ``key`` as text: a string, or an integer (``baseline_version = 3``) as its digits.

    A float is refused, because TOML has already lost its spelling (``1.10`` reads as 1.1).
    """
    value = section.get(key, (str, int), None, 'a version such as "3" or "1.1"')
    if isinstance(value, bool):
        section.errors.add(section.key_path(key), 'must be a version such as "3" or "1.1", not true or false')
        return None
    return None if value is None else str(value)


def _merge(values: dict[str, Any], placeholders: dict[str, str], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if key.startswith("placeholders."):
            placeholders[key[len("placeholders.") :].lower()] = "" if value is None else str(value)
        else:
            values[key] = value


def _settings_from(
    values: Mapping[str, Any],
    placeholders: Mapping[str, str],
    section: Section,
    engine: str,
    flyway_binary: str,
    sources: tuple[str, ...],
) -> MigrationSettings:
    d = MigrationSettings()
    problems: list[str] = []

    def get(key: str, default: Any) -> Any:
        if key not in values or values[key] is None:
            return default
        try:
            return _convert(values[key], KIND[key])
        except ValueError as exc:
            problems.append(f"{key} ({SNAKE[key]}): {exc}")
            return default

    locations = tuple(_location_path(loc, problems) for loc in get("locations", list(d.locations)))
    suffixes = tuple(get("sqlMigrationSuffixes", list(d.naming.suffixes)))
    naming = Naming(
        versioned_prefix=get("sqlMigrationPrefix", d.naming.versioned_prefix),
        repeatable_prefix=get("repeatableSqlMigrationPrefix", d.naming.repeatable_prefix),
        separator=get("sqlMigrationSeparator", d.naming.separator),
        suffixes=suffixes,
    )
    syntax = PlaceholderSyntax(
        enabled=get("placeholderReplacement", True),
        prefix=get("placeholderPrefix", "${"),
        suffix=get("placeholderSuffix", "}"),
        separator=get("placeholderSeparator", ":"),
    )
    target = str(get("target", d.target))
    settings = MigrationSettings(
        locations=tuple(p for p in locations if p),
        table=get("table", d.table),
        schemas=tuple(get("schemas", [])),
        default_schema=get("defaultSchema", None),
        tablespace=get("tablespace", None),
        placeholders=dict(placeholders),
        placeholder_syntax=syntax,
        naming=naming,
        engine=engine,
        flyway_binary=flyway_binary,
        baseline_on_migrate=get("baselineOnMigrate", d.baseline_on_migrate),
        baseline_version=str(get("baselineVersion", d.baseline_version)),
        baseline_description=get("baselineDescription", d.baseline_description),
        validate_on_migrate=get("validateOnMigrate", d.validate_on_migrate),
        out_of_order=get("outOfOrder", d.out_of_order),
        target=target,
        ignore_migration_patterns=tuple(get("ignoreMigrationPatterns", list(d.ignore_migration_patterns))),
        installed_by=get("installedBy", None),
        create_schemas=get("createSchemas", d.create_schemas),
        mixed=get("mixed", d.mixed),
        group=get("group", d.group),
        execute_in_transaction=get("executeInTransaction", d.execute_in_transaction),
        encoding=get("encoding", d.encoding),
        validate_migration_naming=get("validateMigrationNaming", d.validate_migration_naming),
        lock_retry_count=get("lockRetryCount", d.lock_retry_count),
        transactional_lock=get("postgresql.transactional.lock", True),
        url=get("url", None),
        user=get("user", None),
        password=get("password", None),
        environment=get("environment", "default"),
        sources=sources,
    )
    if settings.url and not settings.url.startswith("jdbc:postgresql:"):
        problems.append(f"url: only jdbc:postgresql: URLs are supported, not '{settings.url.split('//')[0]}'")
    if settings.url:
        try:
            jdbc_to_conninfo(settings.url, settings.user)
        except ValueError as exc:
            problems.append(f"url: {exc}")
    for pattern in settings.ignore_migration_patterns:
        if not _valid_pattern(pattern):
            problems.append(f"ignoreMigrationPatterns: invalid pattern '{pattern}' (use type:state, e.g. '*:future')")
    for problem in problems:
        section.errors.add(section.path, problem)
    return settings


def _convert(value: Any, kind: str) -> Any:
    if kind == "list":
        if isinstance(value, list | tuple):
            return [str(v).strip() for v in value if str(v).strip()]
        return [part.strip() for part in str(value).split(",") if part.strip()]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text not in ("true", "false"):
            raise ValueError(f"must be true or false, not '{value}'")
        return text == "true"
    if kind == "int":
        try:
            return int(str(value).strip())
        except ValueError:
            raise ValueError(f"must be an integer, not '{value}'") from None
    return str(value)


def _location_path(location: str, problems: list[str]) -> str:
    if location.startswith("filesystem:"):
        return location[len("filesystem:") :]
    if ":" in location.split("/")[0] and not re.match(r"^[A-Za-z]:[\\/]", location):
        problems.append(
            f"locations: '{location}' is not a filesystem location; opskit has no JVM classpath (use filesystem:<dir>)"
        )
        return ""
    return location


def _valid_pattern(pattern: str) -> bool:
    kind, _, state = pattern.partition(":")
    return kind.lower() in ("*", "repeatable", "versioned") and state.lower() in (
        "*",
        "missing",
        "pending",
        "ignored",
        "future",
    )
