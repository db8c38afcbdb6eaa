"""The storage contract every backend implements.

Keys are relative to the storage's own prefix (the path part of its URL) and always use
``/``. A writer commits on a clean exit of its ``with`` block and aborts on an exception,
leaving nothing visible under the key; that is what lets the manifest, written last, be
the only marker of a complete backup.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Protocol, runtime_checkable

from opskit.core.errors import ObjectLocked, StorageError

# Chunk size used by every streaming stage: large enough for throughput, small enough
# that memory never grows with the database (ARCHITECTURE.md: 1-16 MiB).
CHUNK_SIZE = 1024 * 1024


def scheme_of(url: str) -> str:
    """Return the scheme of a storage URL (``s3`` for ``s3://bucket/prefix``)."""
    scheme, sep, _ = url.partition("://")
    return scheme if sep else ""


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
class ObjectInfo:
    """One stored object: its key (relative to the storage prefix), size in bytes and mtime (UTC)."""

    key: str
    size: int
    modified: datetime


@runtime_checkable
class Storage(Protocol):
    """What opskit needs from a place that keeps objects.

    Every method raises :class:`opskit.errors.StorageError` (or ``ObjectNotFound``)
    after bounded retries; library exceptions never escape a backend module.
    """

    name: str
    url: str
    kind: str  # "file", "s3", "gs", "az": used for the 3-2-1 "two kinds of storage" check

    def writer(self, key: str, *, immutable: bool = False) -> AbstractContextManager[BinaryIO]:
        """Return a context manager yielding a writable stream; commit on clean exit, abort on error.

        ``immutable`` marks a backup artifact or manifest: on a storage configured with
        ``immutable`` (see :class:`Immutability`) it is stored under retention. Records that
        opskit rewrites or removes (locks, pins, verifications) are written without it.
        """
        ...

    def reader(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Return a context manager yielding a readable stream of the object's bytes."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Store a small object under ``key`` only if no object is there; return False when one was.

        Atomic on the storage itself (``O_EXCL``/link, ``If-None-Match: *``, a generation-0
        precondition, ``If-None-Match`` on a blob): of two concurrent creates exactly one
        returns True, which is what makes a lock object safe. Raises StorageError.
        """
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix`` (all pages), in no set order."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Return True when an object is stored under ``key``."""
        ...

    def check_writable(self) -> None:
        """Write, read back and delete a small probe object.

        Raises UnreachableError naming the storage and the cause (missing bucket, bad
        credentials, read-only credential, permission denied).
        """
        ...


IMMUTABLE_MODES = ("governance", "compliance")


@dataclass(frozen=True)
class Immutability:
    """A storage's ``immutable`` option: every backup object is locked for ``days`` in ``mode``.

    ``mode`` is ``governance`` (a principal with s3:BypassGovernanceRetention may still
    delete) or ``compliance`` (nobody can, not even the account root, until the date).
    """

    mode: str
    days: int

    def retain_until(self, now: datetime) -> datetime:
        """Return the retain-until date of an object written at ``now``."""
        return now + timedelta(days=self.days)

    def describe(self) -> str:
        """Return ``governance, 30 days`` for messages."""
        return f"{self.mode}, {self.days} day{'s' if self.days != 1 else ''}"


@dataclass(frozen=True)
class LockState:
    """Whether a storage's bucket enforces immutability, as the store itself reports it.

    ``enabled`` is None when the store would not say (no permission to read the setting).
    ``detail`` is one line for ``status`` and ``config check``.
    """

    enabled: bool | None
    detail: str
    configured: Immutability | None = None


@runtime_checkable
class ObjectLocks(Protocol):
    """Optional: a storage whose objects can be under retention (S3 Object Lock)."""

    immutability: Immutability | None

    def lock_state(self) -> LockState:
        """Return whether the bucket enforces retention. Raises StorageError."""
        ...

    def retained_until(self, key: str) -> datetime | None:
        """Return the retain-until date of ``key`` (None when it has none). Raises StorageError."""
        ...


@runtime_checkable
class ServerSideCopy(Protocol):
    """Optional: copy an object from another storage of the same provider without streaming it."""

    def copy_from(self, source: Storage, key: str) -> bool:
        """Copy ``key`` from ``source`` to the same key here; return False when not possible."""
        ...


@runtime_checkable
class HidesRetained(Protocol):
    """Optional: make an object stop being listed although retention keeps its bytes (S3 Object Lock).

    For records opskit removes as part of its own protocol (lock objects): on a bucket whose
    *default* retention locks every new object, :meth:`Storage.delete` is refused, and a lock
    that cannot be removed would block every other run until it went stale.
    """

    def hide(self, key: str) -> None:
        """Hide ``key`` behind a delete marker (its retained versions stay). Raises StorageError."""
        ...


@runtime_checkable
class IncompleteUploads(Protocol):
    """Optional: list and abort uploads that were started and never completed (S3 multipart)."""

    def abort_incomplete_uploads(self, prefix: str, older_than: datetime, dry_run: bool) -> list[str]:
        """Abort incomplete uploads under ``prefix`` started before ``older_than``; return their keys."""
        ...


def join_key(*parts: str) -> str:
    """Join key parts with single slashes, ignoring empty parts."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def probe_round_trip(storage: Storage) -> None:
    """Write a small probe object under a random key, read it back and delete it.

    The ``check_writable`` of every backend that goes through its own writer and reader.
    Raises StorageError (or UnreachableError) from whichever step failed; the caller words it.
    """
    probe = f".opskit-probe-{secrets.token_hex(6)}"
    with storage.writer(probe) as out:
        out.write(b"probe")
    with storage.reader(probe) as inp:
        inp.read()
    storage.delete(probe)


def delete_or_hide(storage: Storage, key: str) -> None:
    """Delete ``key``, or hide it where the store's retention refuses the delete.

    For records opskit removes as part of its own protocol (locks, pins, clock probes): on an S3
    bucket with Object Lock *default* retention every new object is retained, so a plain delete
    is refused (ObjectLocked) and the record would stay listed; a delete marker hides it (its
    retained versions expire with their retention). Raises StorageError, and ObjectLocked on a
    store that cannot hide objects (GCS, Azure retention policies).
    """
    try:
        storage.delete(key)
    except ObjectLocked:
        if not isinstance(storage, HidesRetained):
            raise
        storage.hide(key)


CLOCK_PROBE_PREFIX = ".opskit-clock-"


def storage_time(storage: Storage, prefix: str) -> datetime:
    """Return the storage's own current time: the modification time of a probe object it just stored.

    The probe (a few bytes under ``prefix``, named :data:`CLOCK_PROBE_PREFIX` + a random id) is
    written create-if-absent, listed back for its modification time, and removed (hidden on a
    bucket whose default retention refuses the delete; left for its retention to end where the
    store can do neither). Every backend stamps an object with its own clock (local disk: the
    kernel's of the host or NFS server holding the files; S3, GCS, Azure: the service's), so the
    answer does not depend on this host's clock; S3 and Azure keep whole seconds, so it may be up
    to a second early. Raises StorageError (a read-only credential cannot write the probe).
    """
    key = join_key(prefix, f"{CLOCK_PROBE_PREFIX}{secrets.token_hex(6)}")
    while not storage.create(key, b"clock"):
        key = join_key(prefix, f"{CLOCK_PROBE_PREFIX}{secrets.token_hex(6)}")  # taken: astronomically rare
    try:
        stamped = next((info.modified for info in storage.list(key) if info.key == key), None)
    finally:
        # ObjectLocked: a GCS or Azure retention policy; a few bytes wait out their retention,
        # and no record reader looks at them.
        with suppress(ObjectLocked):
            delete_or_hide(storage, key)
    if stamped is None:
        raise StorageError(
            f"storage '{storage.name}': the clock probe '{key}' was not listed right after it was written",
            hint="the store's listing lags its writes; run again",
        )
    return stamped


def delete_refused(
    storage: str, key: str, until: datetime | None, mechanism: str, undated: str = "a hold"
) -> ObjectLocked:
    """Return the error for a delete the store refused because ``key`` is under retention.

    ``mechanism`` names the store's feature (``S3 Object Lock``, ``GCS retention``, ...);
    ``undated`` says what keeps an object without an end date (a legal hold). Every backend
    words it the same, so prune's report reads the same whatever the storage.
    """
    when = (
        f"until {until.astimezone(UTC).replace(microsecond=0).isoformat().replace('+00:00', 'Z')}"
        if until
        else f"({undated})"
    )
    return ObjectLocked(
        f"storage '{storage}': '{key}' is immutable {when} ({mechanism}); it cannot be deleted before",
        hint="nothing to do: it is kept until then, and the next prune after that date deletes it",
        until=until,
    )
