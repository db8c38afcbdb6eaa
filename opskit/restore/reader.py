"""Opening a stored backup to read it back: the one place restore, verify and drills do it.

A :class:`BackupReader` belongs to one storage and parses the configured age identity at most
once, however many backups it opens. :meth:`BackupReader.open` returns an :class:`OpenedBackup`:
the manifest, the pg_dump major of its archive, the pg_restore able to read that archive, and
methods that stream an artifact's plain bytes (both hashes checked) or hash its stored bytes
(no key needed). Every decoding step lives in ``opskit.catalog.artifacts``; this module only
assembles it once per backup.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Protocol

from opskit.catalog import DUMP_ARTIFACT, Manifest, artifacts
from opskit.context import AppContext
from opskit.core.errors import VerificationFailed
from opskit.pg import tools
from opskit.pipeline import Progress, StoreResult, StreamStats, parse_identities
from opskit.storage.base import Storage

# An age identity (pyrage.x25519.Identity or pyrage.ssh.Identity); pyrage ships no type stubs.
Identity = Any


class Sink(Protocol):
    """Where plain bytes go: a pipe to pg_restore or psql, a TOC reader, a parallel restore."""

    def write(self, data: bytes, /) -> int: ...


def dump_major(manifest: Manifest) -> int:
    """Return the lowest pg_restore major that can read the dump: the newer of server and pg_dump.

    Returns 0 when the manifest records neither (any pg_restore is tried).
    """
    majors = [manifest.server.get("major"), (manifest.tools.get("pg_dump") or {}).get("major")]
    return max((int(m) for m in majors if isinstance(m, int)), default=0)


def archive_origin(manifest: Manifest) -> str:
    """Return what made the backup's archive, for messages: "an archive of pg_dump 18.1 from a PostgreSQL 13 server"."""
    dumped_by = (manifest.tools.get("pg_dump") or {}).get("version")
    server = manifest.server.get("major")
    return f"an archive of pg_dump {dumped_by or 'unknown'} from a PostgreSQL {server or 'unknown'} server"


class BackupReader:
    """Opens the backups of one storage; the configured age identity is parsed on first need, once.

    ``bin_dir`` is where pg_restore is looked for first (the restoring server's ``pg_bin_dir``
    or ``[tools] pg_bin_dir``); None searches the PATH only.
    """

    def __init__(self, ctx: AppContext, storage: Storage, bin_dir: tools.BinDirs = None) -> None:
        self.ctx = ctx
        self.storage = storage
        self.bin_dir = bin_dir

    @functools.cached_property
    def identities(self) -> list[Identity]:
        """Return the configured age identities ([] when none is configured).

        Raises ConfigError when the identity cannot be resolved or holds no valid key.
        """
        ref = self.ctx.config.encryption.identity
        return [] if ref is None else parse_identities(ref.resolve())

    def open(self, manifest: Manifest) -> OpenedBackup:
        """Return the backup ``manifest`` describes, ready to read (nothing is read yet)."""
        return OpenedBackup(manifest, self.storage, self, dump_major(manifest))


@dataclass
class OpenedBackup:
    """One backup selected for reading: its manifest and storage, its archive's pg_dump major, and its reader."""

    manifest: Manifest
    storage: Storage
    reader: BackupReader = field(repr=False)
    dump_major: int
    _pg_restore: tools.Tool | None = field(default=None, repr=False)

    @property
    def identities(self) -> list[Identity]:
        """Return the identities that decrypt this backup: none for an unencrypted one (no secret is resolved).

        Raises ConfigError when the backup is encrypted and the configured identity is unusable.
        """
        return self.reader.identities if self.manifest.encrypted else []

    def pg_restore(self) -> tools.Tool:
        """Return the pg_restore whose major is at least the dump's (found once, then remembered).

        Raises UnreachableError when no such pg_restore is installed.
        """
        if self._pg_restore is None:
            self._pg_restore = tools.find_tool(
                "pg_restore", self.dump_major, self.reader.bin_dir, needed_for=archive_origin(self.manifest)
            )
        return self._pg_restore

    def check_can_decrypt(self, name: str = DUMP_ARTIFACT) -> None:
        """Raise RestoreFailed (exit 4) when artifact ``name`` is encrypted and no configured identity fits."""
        artifacts.check_can_decrypt(self.manifest.artifact(name), self.identities, self.manifest.id)

    def read(self, name: str, sink: Sink, progress: Progress | None = None) -> StoreResult:
        """Stream artifact ``name`` decrypted and decompressed into ``sink``; return both streams' stats.

        Raises RestoreFailed when no identity fits (4), VerificationFailed when a size or sha256
        differs from the manifest, the object is missing or does not decrypt (5), StorageError
        for other storage problems.
        """
        return artifacts.read_artifact(
            self.storage,
            self.manifest.artifact(name),
            sink,
            identities=self.identities,
            backup_id=self.manifest.id,
            progress=progress,
            cancel=self.reader.ctx.cancel,
        )

    def hash_stored(self, name: str = DUMP_ARTIFACT, progress: Progress | None = None) -> StreamStats:
        """Stream artifact ``name``'s stored bytes and return their size and sha256 (no key needed).

        Raises ObjectNotFound when the object is missing, StorageError on other storage failures.
        """
        return artifacts.hash_stored(
            self.storage, self.manifest.artifact(name), cancel=self.reader.ctx.cancel, progress=progress
        )

    def check_stored_bytes(self, name: str = DUMP_ARTIFACT) -> None:
        """Raise VerificationFailed (5) when artifact ``name``'s stored size or sha256 differs from the manifest.

        Called when pg_restore stopped reading: a corrupt object confuses it into odd errors,
        so the object is blamed first when its bytes changed.
        """
        artifact = self.manifest.artifact(name)
        stats = self.hash_stored(name)
        if (stats.size, stats.sha256) != (artifact.size, artifact.sha256):
            raise VerificationFailed(
                f"artifact '{artifact.key}' of backup {self.manifest.id}: stored sha256 mismatch "
                f"(expected {artifact.sha256}, got {stats.sha256}); pg_restore could not read it",
                hint="the object is corrupt; restore another backup or a copy from another storage",
            )


def open_backup(ctx: AppContext, storage: Storage, manifest: Manifest, bin_dir: tools.BinDirs = None) -> OpenedBackup:
    """Return ``manifest``'s backup in ``storage`` opened with a reader of its own (see :class:`BackupReader`)."""
    return BackupReader(ctx, storage, bin_dir).open(manifest)
