"""The configuration's typed, frozen model (targets, storages, objectives, tools)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from opskit.config import databases as server_databases
from opskit.config.daemon import DaemonSettings
from opskit.config.drill import DrillSettings
from opskit.config.hooks import HookSettings
from opskit.config.migrations import MigrationSettings
from opskit.config.notify import NotifySettings
from opskit.config.retention import RetentionPolicy
from opskit.config.wal import WalSettings
from opskit.core.errors import ConfigError
from opskit.secrets.references import SecretRef
from opskit.storage.base import StorageConfig

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
    pg_bin_dir: str | tuple[str, ...] | None = None  # one directory or several, searched in order
    control_dsn: str | None = None
    # A server target (config/databases.py): the database patterns it backs up, each as a derived target.
    databases: tuple[str, ...] = ()
    exclude_databases: tuple[str, ...] = ()
    # A derived target: its server target's name and its database (None for a configured target).
    server: str | None = None
    database: str | None = None

    @property
    def primary_storage(self) -> str:
        """Return the name of the storage backups are written to first."""
        return self.storages[0]

    @property
    def is_server(self) -> bool:
        """Return True for a server target (it sets ``databases``): it has no backups of its own."""
        return bool(self.databases)

    def derive(self, database: str) -> TargetConfig:
        """Return the derived target ``<name>.<database>`` of this server target: the same settings, the dsn's database replaced.

        Raises ConfigError (2) when the derived name cannot be stored.
        """
        return replace(
            self,
            name=server_databases.derived_name(self.name, database),
            dsn=server_databases.with_database(self.dsn, database),
            databases=(),
            exclude_databases=(),
            server=self.name,
            database=database,
        )


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

    pg_bin_dir: str | tuple[str, ...] | None = None  # one directory or several, searched in order
    state_dir: Path = Path(".opskit-state")
    # How the database server's user runs opskit in a restored copy's restore_command
    # (e.g. "/opt/opskit/bin/opskit"); None: this interpreter ("python -m opskit").
    opskit_command: str | None = None


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
    hooks: HookSettings | None = None
    default_target: str | None = None  # the target commands use without -t (see default_target_name)
    wal: WalSettings | None = None
    source: Path | None = None

    def default_target_name(self) -> str | None:
        """Return the target a command means without ``-t``: ``default_target``, else the only one, else the only non-staging one.

        None when the choice is not obvious (several targets that are not another's staging).
        """
        if self.default_target is not None:
            return self.default_target
        if len(self.targets) == 1:
            return next(iter(self.targets))
        staging = {t.staging for t in self.targets.values() if t.staging}
        protected = [name for name in self.targets if name not in staging]
        return protected[0] if len(protected) == 1 else None

    def target(self, name: str | None) -> TargetConfig:
        """Return the named target, or :meth:`default_target_name`'s when ``name`` is None.

        Raises ConfigError naming the known targets.
        """
        if name is None:
            name = self.default_target_name()
            if name is None:
                raise ConfigError(
                    "several targets are configured and none was chosen",
                    hint=f"pass -t/--target with one of: {', '.join(sorted(self.targets))}, "
                    "or set default_target at the top of the config",
                )
        try:
            return self.targets[name]
        except KeyError:
            # ``app.orders``: database orders of server target app (config/databases.py).
            for server, database in server_databases.splits(name):
                server_target = self.targets.get(server)
                if server_target is not None and server_target.is_server:
                    return server_target.derive(database)
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
