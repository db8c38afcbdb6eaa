"""The last check before a backup (or a copy) is committed: every artifact is still where it was written.

:func:`opskit.catalog.repository.write_manifest` commits a backup; the writers call
:func:`check_artifacts_stored` right before it, so a manifest never promises an artifact that
something removed or cut while the run was under way.
"""

from __future__ import annotations

from opskit.catalog.manifest import Manifest
from opskit.core.errors import BackupFailed
from opskit.storage.base import Storage


def check_artifacts_stored(storage: Storage, manifest: Manifest) -> None:
    """Re-read the existence and size of every artifact just before the manifest commits them.

    The manifest is the promise that the backup is complete; something may have deleted or
    cut an artifact since it was written (a prune of an opskit without repository locks, an
    ``opskit unlock --all``, a lifecycle rule). Raises BackupFailed (exit 4) naming the
    artifact; the caller then writes no manifest.
    """
    stored = {info.key: info.size for info in storage.list(manifest.prefix + "/")}
    for artifact in manifest.artifacts:
        size = stored.get(artifact.key)
        if size == artifact.size:
            continue
        found = "is missing" if size is None else f"has {size} bytes instead of {artifact.size}"
        raise BackupFailed(
            f"artifact '{artifact.key}' of backup {manifest.id} {found} in storage '{storage.name}' "
            "just before the manifest was written; no manifest was written",
            hint="something deleted it while the backup ran (check 'opskit unlock' use and lifecycle rules); "
            "run the backup again",
        )
