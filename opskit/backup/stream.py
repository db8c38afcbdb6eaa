"""What both kinds of backup share: a dump program's stdout streamed into one storage object.

A logical backup streams ``pg_dump`` and ``pg_dumpall``, a base backup ``pg_basebackup``'s tar;
each through the pipeline (sha256, zstd, optional age, sha256) into the storage, committed
only when the program exited 0. Also here: the manifest record of a stored stream, removing
what a failed run committed, and copying a finished backup to a secondary storage.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

from opskit.catalog import Artifact, Manifest, backup_prefix, manifest_key
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import BackupFailed, Cancelled, OpskitError
from opskit.core.execute import spawn
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pipeline import StoreResult, compress_and_store
from opskit.storage.base import Storage

log = get_logger(__name__)

DEFAULT_HINT = "nothing was committed; fix the cause above and run the backup again"


def store_tool_output(
    ctx: AppContext,
    target: TargetConfig,
    storage: Storage,
    argv: list[str],
    env: dict[str, str],
    key: str,
    *,
    label: str,
    program: str,
    hint: str = DEFAULT_HINT,
    wrap: Callable[[Any], Any] | None = None,
) -> StoreResult:
    """Run a dump program and stream its stdout into ``key``; commit only if it exits 0.

    ``wrap`` may put a reader between the program and the pipeline (the base backup keeps
    ``backup_label`` from its tar that way). A cancel (daemon shutdown) kills the program at
    once, even while it waits on a lock, so the upload ends and is aborted instead of
    committed. Returns both hashes and sizes; raises BackupFailed (naming ``program`` and
    ending with ``hint``), Cancelled, or the storage's error.
    """
    compression = ctx.config.compression
    with spawn(argv, env=env, stdout=subprocess.PIPE) as child, ByteProgress(label, ctx.interactive) as progress:
        done = threading.Event()

        def kill_on_cancel() -> None:
            while not done.wait(0.2):
                if ctx.cancel.is_set():
                    child.kill()
                    return

        threading.Thread(target=kill_on_cancel, name="opskit-cancel-watch", daemon=True).start()

        def check_exit() -> None:
            if ctx.cancel.is_set():
                raise Cancelled("the run was cancelled (shutdown requested); nothing was committed")
            child.check(BackupFailed, f"{program} of target '{target.name}' failed", hint=hint)

        try:
            return compress_and_store(
                wrap(child.stdout) if wrap is not None else child.stdout,
                storage,
                key,
                level=compression.level,
                threads=compression.threads,
                recipients=ctx.config.encryption.recipients,
                cancel=ctx.cancel,
                progress=progress,
                before_commit=check_exit,
            )
        finally:
            done.set()


def artifact(name: str, key: str, stored: StoreResult, encryption: dict[str, Any] | None) -> Artifact:
    """Return the manifest's record of a stream stored at ``key``: both sizes and hashes, zstd, its age recipients."""
    return Artifact(
        name=name,
        key=key,
        size=stored.stored.size,
        sha256=stored.stored.sha256,
        plain_size=stored.plain.size,
        plain_sha256=stored.plain.sha256,
        compression="zstd",
        encryption=encryption,
    )


def remove_partial_backup(storage: Storage, target: str, backup_id: str) -> None:
    """Delete the objects a failed run already committed (best effort: prune sweeps what is left).

    ``manifest.json`` goes first, when the run got as far as writing it (a late error, a second
    SIGTERM): the manifest is what lists a backup, so a cleanup cut short after any delete
    leaves unlisted objects for prune, never a listed backup whose dump is gone. The rest
    follow in key order.
    """
    manifest = manifest_key(target, backup_id)
    try:
        keys = [info.key for info in storage.list(backup_prefix(target, backup_id) + "/")]
        for key in sorted(keys, key=lambda key: (key != manifest, key)):  # False sorts first: the manifest
            storage.delete(key)
    except Exception as exc:
        log.warning(
            "could not remove a failed backup's artifacts; prune will sweep them", backup_id=backup_id, error=str(exc)
        )


def copy_to_secondaries(
    ctx: AppContext, manifest: Manifest, source: Storage, names: Sequence[str]
) -> dict[str, str | None]:
    """Copy a committed backup to each storage of ``names``; return name -> None, or that copy's one-line error."""
    return {name: copy_to_secondary(ctx, manifest, source, name) for name in names}


def copy_to_secondary(ctx: AppContext, manifest: Manifest, source: Storage, name: str) -> str | None:
    """Copy a committed backup to the storage ``name``; return None, or the copy's one-line error (a warning)."""
    from opskit.backup.copy import copy_backup

    try:
        copy_backup(ctx, manifest, source, ctx.storage(name))
    except OpskitError as exc:
        log.warning("copy failed", storage=name, backup_id=manifest.id, error=exc.one_line())
        return exc.one_line()
    return None
