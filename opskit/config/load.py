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

import contextlib
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from opskit.config import daemon, databases, drill, environ, hooks, migrations, names, notify, retention, wal
from opskit.config.model import (
    CompressionConfig,
    Config,
    EncryptionConfig,
    Objectives,
    TargetConfig,
    ToolsConfig,
)
from opskit.config.retention import RetentionPolicy
from opskit.config.schema import ConfigErrors, Section
from opskit.core.errors import ConfigError
from opskit.storage.base import IMMUTABLE_MODES, Immutability, StorageConfig
from opskit.storage.registry import BACKENDS, COMMON_OPTIONS, scheme_of

_Settings = TypeVar("_Settings")

DEFAULT_CONFIG_NAME = "opskit.toml"
DEFAULT_STORAGE_URL = "file://./opskit-backups"


# --------------------------------------------------------------------------- parsing


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """Return the config file to load: explicit, ``$OPSKIT_CONFIG``, ``./opskit.toml``, or None.

    Raises ConfigError when an explicitly named file does not exist or is a directory.
    """
    for candidate, origin in ((explicit, "--config"), (os.environ.get("OPSKIT_CONFIG"), "OPSKIT_CONFIG")):
        if candidate:
            path = Path(candidate)
            if path.is_dir():
                raise ConfigError(
                    f"config file {path} (from {origin}) is a directory",
                    hint=f"name the file itself, e.g. {path / DEFAULT_CONFIG_NAME}",
                )
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
        # A container configured only by OPSKIT_* variables (config/environ.py) has no file at all.
        return build_config({}) if environ.config_variables(os.environ) else default_config()
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


def build_config(
    raw: Mapping[str, Any],
    source: Path | None = None,
    *,
    environment: bool = True,
    errors: ConfigErrors | None = None,
) -> Config:
    """Validate a parsed TOML document, with the ``OPSKIT_*`` keys of the environment set in it, and return the Config.

    ``environment=False`` reads the document alone. Raises ConfigError listing every problem,
    an unknown ``OPSKIT_*`` variable among them.
    """
    errors = ConfigErrors() if errors is None else errors
    if environment:
        raw = environ.overlay(raw, os.environ, errors, _probe)
    root = Section(raw, "", errors)

    objectives = _parse_objectives(root.table("objectives"))
    compression = _parse_compression(root.table("compression"))
    encryption = _parse_encryption(root.table("encryption"))
    tools = _parse_tools(root.table("tools"))
    storages = {name: _parse_storage(name, section) for name, section in root.tables("storages")}
    if not storages:
        storages = {"local": StorageConfig(name="local", url=DEFAULT_STORAGE_URL)}
    policies = _parse_retention(root)
    targets = {name: _parse_target(name, section, storages, policies) for name, section in root.tables("targets")}
    if not targets:
        targets = {"default": TargetConfig(name="default", dsn="", storages=(next(iter(storages)),))}
    _check_staging(targets, errors)
    default_target = root.str("default_target", None)
    if default_target is not None and default_target not in targets:
        errors.add("default_target", f"names target '{default_target}', which is not configured under [targets]")
        default_target = None
    names.check_names("storages", storages, errors)
    names.check_names("targets", targets, errors)
    databases.check_server_targets(
        targets,
        {n for n, t in targets.items() if t.is_server},
        [n for n, t in targets.items() if t.exclude_databases and not t.is_server],
        errors,
    )

    # The optional sections, each with its own parser; this is the one place that assembles them.
    migration_settings = _parse_optional(root, "migrations", migrations.parse_settings)
    drill_settings = _parse_optional(root, "drill", drill.parse_settings)
    notify_settings = _parse_optional(root, "notify", notify.parse_settings)
    daemon_settings = _parse_optional(root, "daemon", daemon.parse_settings)
    hook_settings = _parse_optional(root, "hooks", hooks.parse_settings)
    wal_settings = _parse_optional(root, "wal", wal.parse_settings)
    root.finish()
    errors.raise_if_any(source)
    return Config(
        targets=targets,
        storages=storages,
        objectives=objectives,
        compression=compression,
        encryption=encryption,
        tools=tools,
        retention=policies,
        migrations=migration_settings,
        drill=drill_settings,
        notify=notify_settings,
        daemon=daemon_settings,
        hooks=hook_settings,
        default_target=default_target,
        wal=wal_settings,
        source=source,
    )


def _probe(errors: ConfigErrors) -> None:
    """Parse config/environ.py's probe document on ``errors`` (which records every key asked for)."""
    with contextlib.suppress(ConfigError):
        build_config(environ.PROBE_DOC, environment=False, errors=errors)


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


def _bin_dirs(section: Section) -> str | tuple[str, ...] | None:
    """Return ``pg_bin_dir``: one directory (a string) or several (a list, searched in order)."""
    value = section.get("pg_bin_dir", (str, list), None, "a directory or a list of directories")
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            section.errors.add(section.key_path("pg_bin_dir"), "must contain only strings")
            return None
        return tuple(value)
    return value


def _parse_tools(section: Section) -> ToolsConfig:
    result = ToolsConfig(
        pg_bin_dir=_bin_dirs(section),
        state_dir=Path(section.str("state_dir", ".opskit-state")),
        opskit_command=section.str("opskit_command", None),
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
                elif key == "immutable":
                    options[key] = _parse_immutable(section.table(key))
                else:
                    options[key] = section.str(key)
            # A secret may come only from OPSKIT_STORAGES_<NAME>_<KEY>[_FILE], absent from the file.
            for key in sorted(backend.secret_options - set(options)):
                ref = section.secret(key)
                if ref is not None:
                    options[key] = ref
    section.finish()
    return StorageConfig(name=name, url=url or "", offsite=offsite, part_size=part_size, options=options)


def _parse_immutable(section: Section) -> Immutability | None:
    """Return the ``immutable = { mode, days }`` table of a storage (None when it has errors)."""
    mode = section.str("mode", "governance")
    days = section.int("days", minimum=1, maximum=36500)
    section.finish()
    if mode not in IMMUTABLE_MODES:
        section.errors.add(section.key_path("mode"), f"must be one of {', '.join(IMMUTABLE_MODES)}, not '{mode}'")
        return None
    return Immutability(mode=mode, days=days) if days is not None else None


def _parse_target(
    name: str, section: Section, storages: Mapping[str, StorageConfig], policies: Mapping[str, RetentionPolicy]
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
    if policy is not None and policy not in policies:
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
        pg_bin_dir=_bin_dirs(section),
        control_dsn=section.str("control_dsn", None),
        databases=section.str_list("databases"),
        exclude_databases=section.str_list("exclude_databases"),
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
    """Parse the ``[retention.NAME]`` policies."""
    if not root.has("retention"):
        root.seen.add("retention")
        return {}
    return {name: retention.parse_policy(section) for name, section in root.tables("retention")}


def _parse_optional(root: Section, key: str, parser: Callable[[Section], _Settings]) -> _Settings | None:
    """Parse the optional section ``key`` with its parser, or return None when the table is absent."""
    if not root.has(key):
        return None
    return parser(root.table(key))
