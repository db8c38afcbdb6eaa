"""AppContext: what every action receives instead of a long argument list."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from opskit.config.model import Config, TargetConfig
from opskit.core.clock import Clock, utc_now
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
        """Return the directory for local state (a parallel restore's TOC copy or spool file); created on first use."""
        path = self.config.tools.state_dir
        path.mkdir(parents=True, exist_ok=True)
        return path
