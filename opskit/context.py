"""AppContext: what every action receives instead of a long argument list."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from opskit.config.model import Config, TargetConfig
from opskit.core.clock import Clock, utc_now
from opskit.core.errors import ConfigError
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.registry import open_storage


@dataclass
class AppContext:
    """The config, a storage factory, the clock and run-wide flags, passed to every action.

    ``clock`` is the one clock of the run (:mod:`opskit.core.clock`), injectable so tests can fake time. ``interactive`` is True when a person
    is at a terminal (progress bars, confirmation prompts). ``cancel`` is set by the daemon
    on SIGTERM; long-running actions check it between chunks and abort cleanly.
    """

    config: Config
    clock: Clock = utc_now
    dry_run: bool = False
    interactive: bool = False
    debug: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    _storages: dict[str, Storage] = field(default_factory=dict)

    def target(self, name: str | None) -> TargetConfig:
        """Return the named target (or the only one). Raises ConfigError for an unknown name."""
        return self.config.target(name)

    def storage(self, name: str) -> Storage:
        """Return the named storage, opened once per context. Raises ConfigError / MissingExtraError."""
        storage = self._storages.get(name)
        if storage is None:
            storage = open_storage(self.config.storage(name))
            self._storages[name] = storage
        return storage

    def storage_config(self, name: str) -> StorageConfig:
        """Return the named storage's configuration."""
        return self.config.storage(name)

    @property
    def state_dir(self) -> Path:
        """Return the directory for local state (a parallel restore's TOC copy or spool file); created on first use.

        Raises ConfigError (exit 2) naming it when it cannot be created (see :func:`prepare_state_dir`).
        """
        return prepare_state_dir(self.config.tools.state_dir)

    def password_state_dir(self, target: TargetConfig) -> Path:
        """Return ``tools.state_dir`` for ``target``'s client tools, checked now if they will need a password file.

        A target with a password (or secret connection parameters) gets its tools' password files
        in ``<state_dir>/pgpass/``, which is created here (0700), so a state_dir that cannot hold
        them fails in preflight, before anything is written. A target without one needs no local
        state: the directory is neither checked nor created, so the default ``./.opskit-state`` under
        a read-only working directory (a cron job in /, a container's read-only root) fails nothing.
        Raises ConfigError (exit 2).
        """
        path = self.config.tools.state_dir
        # Imported here: the context is built by every command, wal fetch (a restore_command) included,
        # which must start without psycopg (tests/wal/test_fetch_startup.py).
        from opskit.pg import connection, passfiles

        if connection.password(target) or connection.secret_params(target):
            passfiles.passfile_dir(path)
        return path


def prepare_state_dir(path: Path) -> Path:
    """Create ``path`` (``tools.state_dir``) with its parents if missing; return it.

    Raises ConfigError (exit 2) naming the directory and ``tools.state_dir`` when it cannot be
    created: below a regular file, or the relative default in a read-only working directory,
    which would otherwise surface as an unexpected OSError (exit 1) in the middle of a run.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the state directory {path.absolute()}: {exc.strerror or exc}",
            hint="tools.state_dir must be a directory opskit can create and write",
        ) from exc
    return path
