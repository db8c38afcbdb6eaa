"""The configuration: TOML in, a frozen typed model out.

Where the file comes from: ``--config FILE``, else ``$OPSKIT_CONFIG``, else ``./opskit.toml``;
with none of them, a target ``default`` from the libpq environment (``PGHOST``,
``PGDATABASE``, ...) and a local-disk storage ``./opskit-backups``.

Validation reports every problem at once, each as ``At 'targets.app.dsn': message``.
Unknown keys are errors: :class:`Section` remembers which keys were read and
``finish()`` reports the rest. Every key is documented in ``config.example.toml``, which
a test loads, so the example can never rot.
"""

from __future__ import annotations

import builtins
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.errors import ConfigError
from opskit.secrets import SecretRef
from opskit.storage import BACKENDS, COMMON_OPTIONS, scheme_of
from opskit.units import parse_duration, parse_size

if TYPE_CHECKING:
    from opskit.actions.drill_settings import DrillSettings
    from opskit.daemon.settings import DaemonSettings
    from opskit.migrate.settings import MigrationSettings
    from opskit.notify import NotifySettings
    from opskit.retention import RetentionPolicy

DEFAULT_CONFIG_NAME = "opskit.toml"
DEFAULT_STORAGE_URL = "file://./opskit-backups"
_MISSING: Any = object()


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Objectives:
    """Recovery objectives and the allowances added to a drill's measured RTO."""

    rpo: timedelta = timedelta(hours=1)
    rto: timedelta = timedelta(hours=4)
    detection: timedelta = timedelta(0)
    decision: timedelta = timedelta(0)
    cutover: timedelta = timedelta(0)

    @property
    def allowances(self) -> timedelta:
        """Return detection + decision + cutover: what a real recovery adds to a drill's time."""
        return self.detection + self.decision + self.cutover


@dataclass(frozen=True)
class TargetConfig:
    """A database opskit protects (or restores into)."""

    name: str
    dsn: str
    password: SecretRef | None = None
    storages: tuple[str, ...] = ()
    staging: str | None = None
    protected: bool = False
    retention: str | None = None
    fingerprint_tables: tuple[str, ...] = ()
    fingerprint_max_bytes: int = 1024**3
    pg_bin_dir: str | None = None
    control_dsn: str | None = None

    @property
    def primary_storage(self) -> str:
        """Return the name of the storage backups are written to first."""
        return self.storages[0]


@dataclass(frozen=True)
class StorageConfig:
    """A place backups are kept. ``options`` holds the backend's own settings (secrets as SecretRef)."""

    name: str
    url: str
    offsite: bool = False
    part_size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """Return the URL scheme: ``file``, ``s3``, ``gs`` or ``az``."""
        return scheme_of(self.url)


@dataclass(frozen=True)
class CompressionConfig:
    """zstd settings: ``level`` 1-19, ``threads`` 0 = one per core."""

    level: int = 3
    threads: int = 0


@dataclass(frozen=True)
class EncryptionConfig:
    """age encryption: public ``recipients`` for backups, an ``identity`` reference for reading them."""

    recipients: tuple[str, ...] = ()
    identity: SecretRef | None = None

    @property
    def enabled(self) -> bool:
        """Return True when backups are encrypted."""
        return bool(self.recipients)


@dataclass(frozen=True)
class ToolsConfig:
    """Where PostgreSQL client tools are looked for, and where opskit keeps local state."""

    pg_bin_dir: str | None = None
    state_dir: Path = Path(".opskit-state")


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    targets: Mapping[str, TargetConfig]
    storages: Mapping[str, StorageConfig]
    objectives: Objectives = Objectives()
    compression: CompressionConfig = CompressionConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    tools: ToolsConfig = ToolsConfig()
    retention: Mapping[str, RetentionPolicy] = field(default_factory=dict)
    # Optional sections, each parsed by the module that owns it; None when the table is absent.
    migrations: MigrationSettings | None = None
    drill: DrillSettings | None = None
    notify: NotifySettings | None = None
    daemon: DaemonSettings | None = None
    source: Path | None = None

    def target(self, name: str | None) -> TargetConfig:
        """Return the named target, or the only one when ``name`` is None.

        Raises ConfigError naming the known targets.
        """
        if name is None:
            if len(self.targets) == 1:
                return next(iter(self.targets.values()))
            raise ConfigError(
                "several targets are configured and none was chosen",
                hint=f"pass --target with one of: {', '.join(sorted(self.targets))}",
            )
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"no target named '{name}'", hint=f"configured targets: {', '.join(sorted(self.targets))}"
            ) from None

    def storage(self, name: str) -> StorageConfig:
        """Return the named storage config; raise ConfigError naming the known ones."""
        try:
            return self.storages[name]
        except KeyError:
            raise ConfigError(
                f"no storage named '{name}'", hint=f"configured storages: {', '.join(sorted(self.storages))}"
            ) from None


# --------------------------------------------------------------------------- validation helpers


class ConfigErrors:
    """Collects every problem found so they can be reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record ``message`` for the key at ``path``."""
        self.problems.append(f"At '{path}': {message}")

    def raise_if_any(self, source: Path | None) -> None:
        """Raise one ConfigError listing every problem, if there were any."""
        if not self.problems:
            return
        where = f" in {source}" if source else ""
        count = len(self.problems)
        message = f"{count} problem{'s' if count > 1 else ''} in the configuration{where}: " + "; ".join(
            self.problems
        )
        error = ConfigError(message, hint="fix them and run 'opskit config check'")
        error.problems = list(self.problems)  # type: ignore[attr-defined]
        raise error


class Section:
    """A TOML table being validated. Typed getters record errors instead of raising.

    Every key read is remembered; ``finish()`` reports the keys nobody read as unknown.
    """

    def __init__(self, raw: Any, path: builtins.str, errors: ConfigErrors) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[builtins.str] = set()
        if isinstance(raw, Mapping):
            self.raw: Mapping[builtins.str, Any] = raw
        else:
            errors.add(path, f"must be a table, not {type(raw).__name__}")
            self.raw = {}

    def key_path(self, key: builtins.str) -> builtins.str:
        """Return the dotted path of ``key`` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: builtins.str) -> builtins.bool:
        """Return True when the key is present (and mark it seen)."""
        self.seen.add(key)
        return key in self.raw

    def get(self, key: builtins.str, kinds: type | tuple[type, ...], default: Any, what: builtins.str) -> Any:
        """Return ``raw[key]`` if it has one of ``kinds``, else record an error and return default."""
        self.seen.add(key)
        if key not in self.raw:
            if default is _MISSING:
                self.errors.add(self.key_path(key), f"is required ({what})")
                return None
            return default
        value = self.raw[key]
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if isinstance(value, kinds) and not (isinstance(value, builtins.bool) and builtins.bool not in _as_tuple(kinds)):
            return value
        self.errors.add(self.key_path(key), f"must be {what}, not {_describe(value)}")
        return default if default is not _MISSING else None

    def str(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """Return a string value."""
        return self.get(key, builtins.str, default, "a string")

    def bool(self, key: builtins.str, default: builtins.bool = False) -> builtins.bool:
        """Return a boolean value."""
        return bool(self.get(key, builtins.bool, default, "true or false"))

    def int(self, key: builtins.str, default: Any = _MISSING, minimum: builtins.int | None = None, maximum: builtins.int | None = None) -> Any:
        """Return an integer within [minimum, maximum]."""
        value = self.get(key, builtins.int, default, "an integer")
        if isinstance(value, builtins.int) and key in self.raw:
            if minimum is not None and value < minimum:
                self.errors.add(self.key_path(key), f"must be at least {minimum}, not {value}")
                return default
            if maximum is not None and value > maximum:
                self.errors.add(self.key_path(key), f"must be at most {maximum}, not {value}")
                return default
        return value

    def duration(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """Return a timedelta from a string such as ``90m`` or ``30d``."""
        value = self.get(key, builtins.str, default, "a duration such as '1h' or '30d'")
        if isinstance(value, builtins.str):
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.errors.add(self.key_path(key), str(exc))
                return default if default is not _MISSING else None
            except OverflowError:  # e.g. '99999999999999999999d' does not fit a timedelta
                self.errors.add(self.key_path(key), f"'{value}' is too long a duration")
                return default if default is not _MISSING else None
        return value

    def size(self, key: builtins.str, default: Any = _MISSING) -> Any:
        """Return a byte count from an integer or a string such as ``64MiB``."""
        value = self.get(key, (builtins.str, builtins.int), default, "a size such as '64MiB'")
        if isinstance(value, builtins.str | builtins.int) and key in self.raw:
            try:
                return parse_size(value)
            except ValueError as exc:
                self.errors.add(self.key_path(key), str(exc))
                return default if default is not _MISSING else None
            except OverflowError:  # e.g. '1e999 TiB' is an infinite float
                self.errors.add(self.key_path(key), f"'{value}' is too large a size")
                return default if default is not _MISSING else None
        return value

    def str_list(self, key: builtins.str, default: tuple[builtins.str, ...] = ()) -> tuple[builtins.str, ...]:
        """Return a list of strings as a tuple."""
        value = self.get(key, list, list(default), "a list of strings")
        if not all(isinstance(item, builtins.str) for item in value):
            self.errors.add(self.key_path(key), "must contain only strings")
            return default
        return tuple(value)

    def secret(self, key: builtins.str) -> SecretRef | None:
        """Return a secret reference (``env:X``, ``file:/path``, ``aws-sm://...``, or a literal).

        ``OPSKIT_<PATH>`` / ``OPSKIT_<PATH>_FILE`` in the environment (Docker's convention; see
        :func:`secret_env_name`) override the file's value; both set is an error.
        """
        value = self.get(key, builtins.str, None, "a secret reference such as 'env:NAME' or 'file:/run/secrets/x'")
        ref = SecretRef(value) if isinstance(value, builtins.str) else None
        name = secret_env_name(self.key_path(key))
        direct, from_file = os.environ.get(name), os.environ.get(f"{name}_FILE")
        if direct and from_file:
            self.errors.add(self.key_path(key), f"both {name} and {name}_FILE are set; unset one")
            return None
        if direct:
            # A reference to the variable, not its value: resolved on use, logged as 'env:NAME'.
            ref = SecretRef(f"env:{name}")
        elif from_file:
            ref = SecretRef(f"file:{from_file}")
        problem = ref.problem() if ref is not None else None
        if problem:
            self.errors.add(self.key_path(key), problem)
            return None
        return ref

    def table(self, key: builtins.str) -> Section:
        """Return the sub-table ``key`` as a Section (empty when absent)."""
        self.seen.add(key)
        return Section(self.raw.get(key, {}), self.key_path(key), self.errors)

    def tables(self, key: builtins.str) -> Iterator[tuple[builtins.str, Section]]:
        """Yield (name, Section) for every sub-table of the table ``key`` (``[targets.NAME]``)."""
        parent = self.table(key)
        for name in parent.raw:
            parent.seen.add(name)
            yield name, Section(parent.raw[name], parent.key_path(name), self.errors)

    def finish(self) -> None:
        """Record an error for every key that no getter asked for."""
        for key in self.raw:
            if key not in self.seen:
                self.errors.add(self.key_path(key), "unknown key")


def secret_env_name(path: str) -> str:
    """Return the environment variable that overrides the secret at ``path``.

    ``targets.app.password`` -> ``OPSKIT_TARGETS_APP_PASSWORD`` (``_FILE`` appended for the
    file form); every character that is not a letter or digit becomes ``_``.
    """
    return "OPSKIT_" + "".join(c if c.isascii() and c.isalnum() else "_" for c in path).upper()


def _as_tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _describe(value: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- parsing


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Return the config file to load: explicit, ``$OPSKIT_CONFIG``, ``./opskit.toml``, or None.

    Raises ConfigError when an explicitly named file does not exist.
    """
    for candidate, origin in ((explicit, "--config"), (os.environ.get("OPSKIT_CONFIG"), "OPSKIT_CONFIG")):
        if candidate:
            path = Path(candidate)
            if not path.is_file():
                raise ConfigError(f"config file {path} (from {origin}) does not exist")
            return path
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.is_file() else None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration; with no file, return the zero-config defaults.

    Raises ConfigError listing every problem.
    """
    path = find_config_path(explicit)
    if path is None:
        return default_config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    return parse_config(text, source=path)


def parse_config(text: str, source: Path | None = None) -> Config:
    """Validate TOML text and return the Config. Raises ConfigError listing every problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source or 'config'} is not valid TOML: {exc}") from exc
    return build_config(raw, source)


def default_config() -> Config:
    """Return the zero-config setup: target ``default`` from libpq's environment, storage ``./opskit-backups``."""
    storage = StorageConfig(name="local", url=DEFAULT_STORAGE_URL)
    target = TargetConfig(name="default", dsn="", storages=("local",))
    return Config(targets={"default": target}, storages={"local": storage})


def build_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document and return the Config. Raises ConfigError listing every problem."""
    errors = ConfigErrors()
    root = Section(raw, "", errors)

    objectives = _parse_objectives(root.table("objectives"))
    compression = _parse_compression(root.table("compression"))
    encryption = _parse_encryption(root.table("encryption"))
    tools = _parse_tools(root.table("tools"))
    storages = {name: _parse_storage(name, section) for name, section in root.tables("storages")}
    if not storages:
        storages = {"local": StorageConfig(name="local", url=DEFAULT_STORAGE_URL)}
    retention = _parse_retention(root)
    targets = {name: _parse_target(name, section, storages, retention) for name, section in root.tables("targets")}
    if not targets:
        targets = {"default": TargetConfig(name="default", dsn="", storages=(next(iter(storages)),))}
    _check_staging(targets, errors)

    migrations = _parse_optional(root, "migrations", "opskit.migrate.settings", "parse_settings")
    drill = _parse_optional(root, "drill", "opskit.actions.drill_settings", "parse_settings")
    notify = _parse_optional(root, "notify", "opskit.notify", "parse_settings")
    daemon = _parse_optional(root, "daemon", "opskit.daemon.settings", "parse_settings")
    root.finish()
    errors.raise_if_any(source)
    return Config(
        targets=targets,
        storages=storages,
        objectives=objectives,
        compression=compression,
        encryption=encryption,
        tools=tools,
        retention=retention,
        migrations=migrations,
        drill=drill,
        notify=notify,
        daemon=daemon,
        source=source,
    )


def _parse_objectives(section: Section) -> Objectives:
    defaults = Objectives()
    result = Objectives(
        rpo=section.duration("rpo", defaults.rpo),
        rto=section.duration("rto", defaults.rto),
        detection=section.duration("detection", defaults.detection),
        decision=section.duration("decision", defaults.decision),
        cutover=section.duration("cutover", defaults.cutover),
    )
    section.finish()
    return result


def _parse_compression(section: Section) -> CompressionConfig:
    result = CompressionConfig(
        level=section.int("level", 3, minimum=1, maximum=19),
        threads=section.int("threads", 0, minimum=0, maximum=256),
    )
    section.finish()
    return result


def _parse_encryption(section: Section) -> EncryptionConfig:
    recipients = section.str_list("recipients")
    for index, recipient in enumerate(recipients):
        if not recipient.startswith("age1"):
            section.errors.add(
                f"{section.key_path('recipients')}[{index}]",
                "must be an age public key (age1...); the private identity never goes here",
            )
    result = EncryptionConfig(recipients=recipients, identity=section.secret("identity"))
    section.finish()
    return result


def _parse_tools(section: Section) -> ToolsConfig:
    result = ToolsConfig(
        pg_bin_dir=section.str("pg_bin_dir", None),
        state_dir=Path(section.str("state_dir", ".opskit-state")),
    )
    section.finish()
    return result


def _parse_storage(name: str, section: Section) -> StorageConfig:
    url = section.str("url")
    offsite = section.bool("offsite", False)
    part_size = section.size("part_size", None)
    options: dict[str, Any] = {}
    if isinstance(url, str):
        scheme = scheme_of(url)
        backend = BACKENDS.get(scheme)
        if backend is None:
            section.errors.add(
                section.key_path("url"),
                f"unknown scheme in '{url}' (use {', '.join(s + '://' for s in BACKENDS)})",
            )
        else:
            for key in section.raw:
                if key in COMMON_OPTIONS:
                    continue
                if key not in backend.options:
                    continue  # reported as unknown by finish()
                if key in backend.secret_options:
                    options[key] = section.secret(key)
                elif key == "path_style":
                    options[key] = section.bool(key)
                elif key == "max_attempts":
                    options[key] = section.int(key, 5, minimum=1, maximum=50)
                else:
                    options[key] = section.str(key)
            # A secret may come only from OPSKIT_STORAGES_<NAME>_<KEY>[_FILE], absent from the file.
            for key in sorted(backend.secret_options - set(options)):
                ref = section.secret(key)
                if ref is not None:
                    options[key] = ref
    section.finish()
    return StorageConfig(name=name, url=url or "", offsite=offsite, part_size=part_size, options=options)


def _parse_target(
    name: str, section: Section, storages: Mapping[str, StorageConfig], retention: Mapping[str, RetentionPolicy]
) -> TargetConfig:
    dsn = section.str("dsn", "")
    names = section.str_list("storages", (next(iter(storages)),) if storages else ())
    for storage_name in names:
        if storage_name not in storages:
            section.errors.add(
                section.key_path("storages"),
                f"names storage '{storage_name}', which is not configured under [storages]",
            )
    if not names:
        section.errors.add(section.key_path("storages"), "must name at least one storage")
    if len(set(names)) != len(names):
        section.errors.add(section.key_path("storages"), "names a storage twice")
    policy = section.str("retention", None)
    if policy is not None and policy not in retention:
        section.errors.add(section.key_path("retention"), f"names policy '{policy}', not configured under [retention]")
    result = TargetConfig(
        name=name,
        dsn=dsn,
        password=section.secret("password"),
        storages=names,
        staging=section.str("staging", None),
        protected=section.bool("protected", False),
        retention=policy,
        fingerprint_tables=section.str_list("fingerprint_tables"),
        fingerprint_max_bytes=section.size("fingerprint_max_bytes", 1024**3),
        pg_bin_dir=section.str("pg_bin_dir", None),
        control_dsn=section.str("control_dsn", None),
    )
    section.finish()
    return result


def _check_staging(targets: Mapping[str, TargetConfig], errors: ConfigErrors) -> None:
    for target in targets.values():
        if target.staging is None:
            continue
        if target.staging not in targets:
            errors.add(f"targets.{target.name}.staging", f"names target '{target.staging}', which is not configured")
        elif target.staging == target.name:
            errors.add(f"targets.{target.name}.staging", "cannot be the target itself")


def _parse_retention(root: Section) -> dict[str, RetentionPolicy]:
    """Parse ``[retention.NAME]`` policies with the planner's own parser."""
    if not root.has("retention"):
        root.seen.add("retention")
        return {}
    from opskit import retention

    return {name: retention.parse_policy(section) for name, section in root.tables("retention")}


def _parse_optional(root: Section, key: str, module: str, function: str) -> Any:
    """Parse the optional section ``key`` with ``module.function(section)``, or return None when absent."""
    if not root.has(key):
        return None
    import importlib

    parser = getattr(importlib.import_module(module), function)
    return parser(root.table(key))
