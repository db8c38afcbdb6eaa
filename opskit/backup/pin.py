"""Pin and unpin a backup: a ``pin.json`` marker next to its manifest keeps it from retention.

The marker is a catalog record (``catalog.Pin``, written and removed by ``catalog.pins``);
this module picks the backup and the storages that hold it. Each storage is pinned under a
shared repository lock, so a pin and a prune of the same storage never overlap: the one that
comes second exits 7 (docs/reliability.md says why the pin is the one to wait).

Without ``--storage`` a pin applies to every storage of the target that holds the
backup (a pinned backup should survive on the offsite copy too).
"""

from __future__ import annotations

from dataclasses import dataclass

from opskit import catalog
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.core.log import get_logger
from opskit.storage.base import Storage

log = get_logger(__name__)


@dataclass(frozen=True)
class PinResult:
    """What ``pin``/``unpin`` did: the backup, the storages holding it, and where the state changed."""

    target: str
    backup_id: str
    storages: tuple[str, ...]
    changed: tuple[str, ...]
    pinned: bool


def pin(
    ctx: AppContext,
    selector: str,
    target: str | None = None,
    storage: str | None = None,
    note: str | None = None,
) -> PinResult:
    """Pin the backup ``selector`` names (id, id prefix or ``latest``) in its storages.

    Returns the PinResult. Raises ConfigError for an unknown target/storage or a backup
    no storage holds; LockHeld (exit 7) while a prune runs on one of them; StorageError
    when the marker cannot be written.
    """
    target_name, backup_id, storages = _resolve(ctx, selector, target, storage)
    changed = []
    record = catalog.Pin(target_name, backup_id, ctx.clock(), note)
    for name, store in storages:
        # A shared lock: a prune (exclusive) of this storage either finished before, or makes
        # this pin exit 7; a pin never returns 0 for a backup a running prune then deletes.
        with catalog.locked(store, target_name, "pin", clock=ctx.clock):
            _require_backup(store, target_name, backup_id)
            if catalog.write_pin(store, record):
                changed.append(name)
    log.info("backup pinned", target=target_name, backup_id=backup_id, storages=[n for n, _ in storages])
    return PinResult(target_name, backup_id, tuple(n for n, _ in storages), tuple(changed), pinned=True)


def unpin(ctx: AppContext, selector: str, target: str | None = None, storage: str | None = None) -> PinResult:
    """Remove the pin of the backup ``selector`` names; unpinning an unpinned backup is not an error.

    Returns the PinResult (``changed`` empty when it was not pinned anywhere). A pin a bucket's
    default retention keeps is hidden instead (``catalog.remove_pin``). Raises ConfigError when
    no storage holds the backup, LockHeld (exit 7) while a prune runs, StorageError (ObjectLocked
    where the store can neither delete nor hide the pin).
    """
    target_name, backup_id, storages = _resolve(ctx, selector, target, storage)
    changed = []
    for name, store in storages:
        with catalog.locked(store, target_name, "unpin", clock=ctx.clock):
            if catalog.remove_pin(store, target_name, backup_id):
                changed.append(name)
    log.info("backup unpinned", target=target_name, backup_id=backup_id, storages=changed)
    return PinResult(target_name, backup_id, tuple(n for n, _ in storages), tuple(changed), pinned=False)


def _require_backup(store: Storage, target: str, backup_id: str) -> None:
    """Raise ConfigError when the backup is gone from ``store`` (a prune deleted it before our lock)."""
    if not store.exists(catalog.manifest_key(target, backup_id)):
        raise ConfigError(
            f"backup {backup_id} of target '{target}' is no longer in storage '{store.name}' "
            "(deleted by a prune before the pin)",
            hint="see 'opskit backup list' and pin another backup",
        )


def _resolve(
    ctx: AppContext, selector: str, target: str | None, storage: str | None
) -> tuple[str, str, list[tuple[str, Storage]]]:
    """Return (target, backup id, [(storage name, storage) holding the backup])."""
    target_config = ctx.target(target)
    if storage is not None:
        if storage not in target_config.storages:
            raise ConfigError(
                f"target '{target_config.name}' does not use storage '{storage}'",
                hint=f"its storages: {', '.join(target_config.storages)}",
            )
        names: tuple[str, ...] = (storage,)
    else:
        names = target_config.storages
    # Resolve "latest" or a prefix once, in the first storage that has it, so every storage pins
    # the same backup.
    manifest = None
    first_error: ConfigError | None = None
    for name in names:
        try:
            manifest = catalog.find_backup(ctx.storage(name), target_config.name, selector, now=ctx.clock())
            break
        except ConfigError as exc:
            first_error = first_error or exc
    if manifest is None:
        assert first_error is not None
        raise first_error
    holding = [
        (name, ctx.storage(name))
        for name in names
        if ctx.storage(name).exists(catalog.manifest_key(target_config.name, manifest.id))
    ]
    return target_config.name, manifest.id, holding
