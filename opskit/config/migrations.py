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

``jdbc:postgresql://`` URLs are translated to libpq conninfo (:func:`jdbc_to_conninfo`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from psycopg.conninfo import make_conninfo

from opskit.config.schema import Section

ENGINES = ("opskit", "flyway")

# (Flyway key, opskit.toml key, kind). Kind: str, bool, int, list.
_KEYS: tuple[tuple[str, str, str], ...] = (
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
_KIND = {flyway: kind for flyway, _, kind in _KEYS}
_SNAKE = {flyway: snake for flyway, snake, _ in _KEYS}


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
    for path in _flyway_files(explicit, environ, cwd, home):
        if not path.is_file():
            if explicit is not None:
                section.errors.add(section.key_path("flyway_config"), f"names {path}, which does not exist")
            continue
        try:
            loaded = _read_toml(path, environ) if path.suffix == ".toml" else _read_conf(path)
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            section.errors.add(section.key_path("flyway_config"), f"cannot read {path}: {exc}")
            continue
        _merge(values, placeholders, loaded)
        sources.append(str(path))

    # 3. [migrations] in opskit.toml.
    own: dict[str, Any] = {}
    for flyway_key, snake, kind in _KEYS:
        if not section.has(snake):
            continue
        if kind == "bool":
            own[flyway_key] = section.bool(snake)
        elif kind == "int":
            own[flyway_key] = section.int(snake, 50, minimum=-1)
        elif kind == "list":
            own[flyway_key] = list(section.str_list(snake))
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
    from_env = _from_environment(environ)
    if from_env:
        sources.append("FLYWAY_* environment")
    _merge(values, placeholders, from_env)
    section.finish()

    return _settings_from(values, placeholders, section, engine, flyway_binary, tuple(sources))


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
            return _convert(values[key], _KIND[key])
        except ValueError as exc:
            problems.append(f"{key} ({_SNAKE[key]}): {exc}")
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


# --------------------------------------------------------------------------- Flyway files and env


def _flyway_files(explicit: tuple[str, ...] | None, environ: Mapping[str, str], cwd: Path, home: Path) -> list[Path]:
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


def _read_conf(path: Path) -> dict[str, Any]:
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
            if key in _KIND or key.startswith("placeholders."):
                result[key] = value
    return result


def _read_toml(path: Path, environ: Mapping[str, str]) -> dict[str, Any]:
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
        elif key in _KIND:
            result[key] = value


def _env_name(flyway_key: str) -> str:
    return "FLYWAY_" + re.sub(r"(?<!^)(?=[A-Z])", "_", flyway_key).replace(".", "_").upper()


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the Flyway settings found in ``FLYWAY_*`` variables (Flyway's ConfigUtils.convertKey)."""
    result: dict[str, Any] = {}
    for flyway_key in _KIND:
        name = _env_name(flyway_key)
        if name in environ:
            result[flyway_key] = environ[name]
    for name, value in environ.items():
        if name.startswith("FLYWAY_PLACEHOLDERS_") and len(name) > len("FLYWAY_PLACEHOLDERS_"):
            result["placeholders." + name[len("FLYWAY_PLACEHOLDERS_") :].lower()] = value
    return result


# --------------------------------------------------------------------------- JDBC URLs

# pgJDBC parameter -> libpq keyword, for the parameters with a libpq equivalent.
_JDBC_PARAMS = {
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "applicationname": "application_name",
    "connecttimeout": "connect_timeout",
    "targetservertype": "target_session_attrs",
    "user": "user",
}
_TARGET_SERVER_TYPES = {
    "any": "any",
    "primary": "read-write",
    "master": "read-write",
    "secondary": "read-only",
    "standby": "read-only",
    "preferSecondary": "prefer-standby",
}


def jdbc_to_conninfo(url: str, user: str | None = None) -> str:
    """Translate ``jdbc:postgresql://host[:port][,host2[:port2]]/db?params`` into libpq conninfo.

    ``currentSchema`` becomes ``options=-csearch_path=...``; ``ssl=true`` becomes
    ``sslmode=require`` unless ``sslmode`` is given. A password in the URL is dropped (give it
    as ``password``/``FLYWAY_PASSWORD`` or, better, the target's password reference).
    Raises ValueError for a URL that is not ``jdbc:postgresql:``.
    """
    if not url.startswith("jdbc:postgresql:"):
        raise ValueError(f"not a jdbc:postgresql: URL: {url.split('?')[0]}")
    rest = url[len("jdbc:postgresql:") :]
    rest, _, query = rest.partition("?")
    parts: dict[str, Any] = {}
    if rest.startswith("//"):
        netloc, _, dbname = rest[2:].partition("/")
        hosts, ports = [], []
        for item in filter(None, netloc.split(",")):
            match = re.fullmatch(r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<h>[^:]+)(?::(?P<p>\d+))?", item)
            if not match:
                raise ValueError(f"cannot parse host '{item}'")
            hosts.append(match.group("v6") or match.group("h"))
            ports.append(match.group("p6") or match.group("p") or "5432")
        if hosts:
            parts["host"] = ",".join(hosts)
            parts["port"] = ",".join(ports)
    else:
        dbname = rest.lstrip("/")
    if dbname:
        parts["dbname"] = unquote(dbname)
    ssl = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        lowered = key.lower()
        if lowered == "currentschema":
            parts["options"] = f"-csearch_path={value}"
        elif lowered == "ssl":
            ssl = value.lower() in ("", "true")
        elif lowered == "targetservertype":
            parts["target_session_attrs"] = _TARGET_SERVER_TYPES.get(value, value)
        elif lowered in _JDBC_PARAMS:
            parts[_JDBC_PARAMS[lowered]] = value
    if ssl and "sslmode" not in parts:
        parts["sslmode"] = "require"
    if user:
        parts["user"] = user
    return make_conninfo(**parts)
