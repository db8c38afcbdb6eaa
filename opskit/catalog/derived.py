"""Which derived targets of a server target a storage holds: the ``<server>.<database>/`` prefixes present.

A server target's databases are known from the server only while it is up; ``backup list``,
``status`` and ``prune`` must still find their backups when it is down, so the catalog is the
record of which derived targets exist (config/databases.py describes server targets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opskit.config import databases
from opskit.config.model import Config
from opskit.core.errors import ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.storage.base import Storage

log = get_logger(__name__)


def derived_targets(storage: Storage, server: str) -> list[str]:
    """Return the sorted names of the derived targets of ``server`` that have objects in ``storage``.

    No configured target may be named ``<server>.<anything>`` (config/databases.py checks it), so
    every such prefix is a derived target's. Raises StorageError when listing fails.
    """
    found: set[str] = set()
    for info in storage.list(f"{server}."):
        segment = info.key.split("/", 1)[0]
        if "/" not in info.key or segment in found:
            continue
        database = segment[len(server) + 1 :]
        try:
            databases.derived_name(server, database)
        except ConfigError:
            continue  # a stray object whose name no derived target could have
        found.add(segment)
    return sorted(found)


def expand_targets(config: Config, open_storage: Callable[[str], Storage], names: Iterable[str]) -> list[str]:
    """Return ``names`` with every server target replaced by the derived targets its storages hold.

    A derived target held only by a secondary storage is found too; a secondary that cannot be
    listed is a warning, the primary's error propagates (StorageError), as ``backup list`` does.
    Raises ConfigError for an unknown name.
    """
    result: list[str] = []
    for name in names:
        target = config.target(name)
        if not target.is_server:
            result.append(target.name)
            continue
        found: set[str] = set()
        for storage_name in target.storages:
            try:
                found.update(derived_targets(open_storage(storage_name), target.name))
            except OpskitError as exc:
                if storage_name == target.primary_storage:
                    raise
                log.warning("storage not listed", storage=storage_name, target=target.name, error=exc.one_line())
        result.extend(sorted(found))
    return result
