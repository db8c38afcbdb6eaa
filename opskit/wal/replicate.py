"""Copy a target's archived WAL from one storage to another, so a copied base backup can be recovered there.

A base backup without its WAL is not even consistent: recovery replays at least the
segments from its ``wal_start`` to its ``wal_stop``, and point-in-time recovery every one
after. ``opskit copy`` therefore carries every WAL file (:mod:`opskit.wal.layout`: the
segments, ``.history`` and ``.backup`` files, each with its ``.sha256`` record, and the
streamer's ``.partial``) that the source holds and the destination lacks, except what no base
backup on the destination needs (the segments before the oldest one's ``wal_start``: the
destination's prune would delete them again, :func:`opskit.wal.retention.plan_wal_deletes`).
"On the destination" means the backups its retention keeps there once the copy is done
(``opskit copy`` passes only those, :mod:`opskit.backup.retained`): counting a base backup
its prune deletes would copy WAL that the same prune deletes again.
A destination without a base backup gets no WAL: nothing there could replay it.

Each file is copied as push stores it, and verified as a backup's artifact is when copied:

1. The stored bytes are read from the source and checked before anything is written: the
   zstd frame must decode to the bytes its ``.sha256`` record names (an encrypted file is
   decrypted first when an ``[encryption] identity`` is configured; without one only its
   size is checked, as ``backup verify`` without the key checks only stored bytes).
2. The record is created if absent; a record already there with another hash is a conflict
   (CopyFailed): nothing is overwritten, as push refuses it.
3. The object is created if absent, then the destination is listed once and every copied
   object must be there with the size read from the source.

Copying is idempotent: a file whose object and record are on the destination is skipped.
A ``.partial`` (overwritten by the streamer as the segment fills) is copied again when its
stored bytes changed, and not at all once its complete segment is archived.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyrage
import zstandard

from opskit.catalog import Manifest
from opskit.context import AppContext
from opskit.core.errors import Cancelled, CopyFailed, ObjectNotFound, VerificationFailed
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pipeline import parse_identities
from opskit.storage.base import Storage
from opskit.wal import layout
from opskit.wal.retention import plan_wal_deletes

log = get_logger(__name__)


@dataclass(frozen=True)
class WalFile:
    """One archived WAL file in a storage: its stored object and, when it has one, its ``.sha256`` record."""

    name: str
    key: str | None = None  # <name>.zst or <name>.zst.age
    size: int = 0
    hash_key: str | None = None

    @property
    def is_partial(self) -> bool:
        """Return True for the streamer's ``<segment>.partial`` (overwritten in place, no record)."""
        return self.name.endswith(".partial")


@dataclass
class WalCopyResult:
    """What one WAL copy did: the names copied (to copy, in a dry run), and how many were already there."""

    copied: list[str] = field(default_factory=list)
    present: int = 0
    bytes: int = 0


def wal_files(store: Storage, target: str) -> dict[str, WalFile]:
    """Return every WAL file of ``target`` in ``store`` by name (objects and records paired). Raises StorageError."""
    found: dict[str, WalFile] = {}
    for info in store.list(layout.wal_prefix(target)):
        last = info.key.rsplit("/", 1)[-1]
        name = layout.name_of_key(info.key)
        if name is not None:
            old = found.get(name, WalFile(name))
            found[name] = WalFile(name, info.key, info.size, old.hash_key)
        elif last.endswith(".sha256") and layout.is_archivable_name(last[: -len(".sha256")]):
            name = last[: -len(".sha256")]
            old = found.get(name, WalFile(name))
            found[name] = WalFile(name, old.key, old.size, info.key)
    return found


def wanted(source: dict[str, WalFile], dest_backups: Sequence[Manifest]) -> list[WalFile]:
    """Return the source's WAL files a destination holding ``dest_backups`` needs, history files first.

    None without a base backup among ``dest_backups``; never a segment before the oldest base
    backup's ``wal_start``, nor a ``.partial`` whose complete segment is archived, nor a record
    without its object (a push still running: the next copy takes it).
    """
    if not any(m.kind == "base" for m in dest_backups):
        return []
    keys = [f.key for f in source.values() if f.key is not None]
    unneeded = set(plan_wal_deletes(keys, dest_backups))
    chosen = [
        f
        for f in source.values()
        if f.key is not None
        and f.key not in unneeded
        and not (f.is_partial and source.get(f.name[:24], WalFile("")).key is not None)
    ]
    return sorted(chosen, key=lambda f: (not layout.is_history_name(f.name), f.name))


def copy_wal(
    ctx: AppContext,
    target: str,
    source: Storage,
    dest: Storage,
    dest_backups: Sequence[Manifest],
    dry_run: bool = False,
) -> WalCopyResult:
    """Copy the WAL of ``target`` that a destination holding ``dest_backups`` needs and lacks; return what was done.

    ``dest_backups`` are the backups the destination will keep (module docstring). The caller holds the destination's copy lock (none for ``dry_run``, which writes nothing
    and returns the names it would copy). Raises VerificationFailed (5) for a source file that
    does not decode to its record's bytes (or cannot be decrypted with the configured
    identity), CopyFailed (4) for a conflicting record on the destination or an object that
    did not arrive whole, Cancelled (4) when the run is cancelled, StorageError on storage failures.
    """
    result = WalCopyResult()
    there = wal_files(dest, target)
    todo = []
    for item in wanted(wal_files(source, target), dest_backups):
        if _already_there(source, item, dest, there.get(item.name)):
            result.present += 1
        else:
            todo.append(item)
    if dry_run:
        result.copied = [f.name for f in todo]
        return result
    sizes: dict[str, int] = {}
    label = f"copy WAL of {target} to {dest.name}"
    with ByteProgress(label, ctx.interactive, expected=sum(f.size for f in todo)) as progress:
        for item in todo:
            if ctx.cancel.is_set():
                # What is copied stays: each file is whole, and the next copy carries on from there.
                raise Cancelled("the run was cancelled (shutdown requested); the WAL copied so far is kept")
            assert item.key is not None
            sizes[item.key] = _copy_one(ctx, target, source, dest, item)
            progress(sizes[item.key])
            result.copied.append(item.name)
            result.bytes += sizes[item.key]
    _check_arrived(dest, target, sizes)
    if result.copied:
        log.info("wal copied", target=target, dest=dest.name, files=len(result.copied), present=result.present)
    return result


def _copy_one(ctx: AppContext, target: str, source: Storage, dest: Storage, item: WalFile) -> int:
    """Copy one WAL file (record first, then object) after checking its bytes; return the stored size."""
    assert item.key is not None
    payload = _read(source, item.key)
    record = _read(source, item.hash_key) if item.hash_key is not None else None
    _verify(ctx, source, item, payload, record)
    if record is not None:
        hash_key = layout.hash_key(target, item.name)
        if not dest.create(hash_key, record):
            theirs = _read(dest, hash_key)
            if _sha256_of(theirs) != _sha256_of(record):
                raise CopyFailed(
                    f"WAL file {item.name} of target '{target}' is already in storage '{dest.name}' with other "
                    "content; nothing was overwritten",
                    hint="two clusters may archive to one target: give each cluster its own target",
                )
    if item.is_partial:
        # The streamer overwrites its partial as the segment fills: the newest bytes replace the old.
        with dest.writer(item.key) as out:
            out.write(payload)
    else:
        dest.create(item.key, payload)  # False: a concurrent copy stored it; the listing checks its size
    return len(payload)


def _verify(ctx: AppContext, source: Storage, item: WalFile, payload: bytes, record: bytes | None) -> None:
    """Raise VerificationFailed when ``payload`` does not decode to the bytes ``record`` names.

    An encrypted file is decoded only with a configured identity; without one nothing but
    its size can be checked (the listing after the copy).
    """
    encrypted = item.key is not None and item.key.endswith(".age")
    if encrypted:
        ref = ctx.config.encryption.identity
        if ref is None:
            return
        try:
            payload = bytes(pyrage.decrypt(payload, parse_identities(ref.resolve())))
        except pyrage.DecryptError as exc:
            raise VerificationFailed(
                f"WAL file {item.name} in storage '{source.name}' cannot be decrypted with the configured "
                f"identity: {exc}; it was not copied",
                hint="configure the age identity whose public key was a recipient when the WAL was archived",
            ) from exc
    try:
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
    except zstandard.ZstdError as exc:
        raise VerificationFailed(
            f"WAL file {item.name} in storage '{source.name}' does not decompress ({exc}); it was not copied",
            hint="the archived object is corrupt: take a new base backup, run 'opskit wal verify'",
        ) from exc
    if record is None:
        return  # a .partial has no record: decoding it whole is the check
    expected = _sha256_of(record)
    if expected is None:
        raise VerificationFailed(
            f"the sha256 record of WAL file {item.name} in storage '{source.name}' is not valid; it was not copied"
        )
    if hashlib.sha256(plain).hexdigest() != expected:
        raise VerificationFailed(
            f"WAL file {item.name} in storage '{source.name}' does not match its recorded sha256; it was not copied",
            hint="the archived object is corrupt: take a new base backup, run 'opskit wal verify'",
        )


def _check_arrived(dest: Storage, target: str, sizes: dict[str, int]) -> None:
    """Raise CopyFailed when an object copied to ``dest`` is missing or has another size (one listing)."""
    if not sizes:
        return
    stored = {info.key: info.size for info in dest.list(layout.wal_prefix(target))}
    for key, size in sorted(sizes.items()):
        if stored.get(key) != size:
            found = "is missing" if key not in stored else f"has {stored[key]} bytes instead of {size}"
            raise CopyFailed(f"WAL object '{key}' {found} in storage '{dest.name}' just after it was copied")


def _already_there(source: Storage, mine: WalFile, dest: Storage, theirs: WalFile | None) -> bool:
    """Return True when ``dest`` holds ``mine`` whole: its object, its record when it has one, a partial's same bytes."""
    if theirs is None or theirs.key is None or (mine.hash_key is not None and theirs.hash_key is None):
        return False
    return not mine.is_partial or _same_bytes(source, mine, dest, theirs)


def _same_bytes(source: Storage, mine: WalFile, dest: Storage, theirs: WalFile) -> bool:
    """Return True when two stored objects have the same bytes (sizes first: a partial that grew differs)."""
    if mine.key is None or theirs.key is None or mine.size != theirs.size or mine.key != theirs.key:
        return False
    return hashlib.sha256(_read(source, mine.key)).digest() == hashlib.sha256(_read(dest, theirs.key)).digest()


def _read(store: Storage, key: str) -> bytes:
    """Return the bytes of ``key``. Raises CopyFailed when it vanished since the listing (a prune), StorageError."""
    try:
        with store.reader(key) as inp:
            return inp.read()
    except ObjectNotFound as exc:
        raise CopyFailed(
            f"WAL object '{key}' vanished from storage '{store.name}' while it was copied",
            hint="a prune may have deleted it; run 'opskit copy' again",
        ) from exc


def _sha256_of(record: bytes) -> str | None:
    """Return the sha256 a ``.sha256`` record holds, or None when it is not a valid record."""
    try:
        value = json.loads(record)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return str(value.get("sha256")) if isinstance(value, dict) and value.get("sha256") else None


def missing_for_consistency(manifest: Manifest, names: set[str]) -> list[str]:
    """Return the segments from a base backup's ``wal_start`` to its ``wal_stop`` absent from ``names``.

    Those are the WAL a base backup cannot be made consistent without (the least any restore
    of it replays); ``names`` are the WAL file names a storage holds. Empty for a logical
    backup, and for a base backup whose manifest has no WAL range (nothing to check).
    """
    start, stop = str(manifest.base.get("wal_start", "")), str(manifest.base.get("wal_stop", ""))
    if manifest.kind != "base" or not (layout.is_segment_name(start) and layout.is_segment_name(stop)):
        return []
    size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
    (first_tli, first), (last_tli, last) = layout.segment_number(start, size), layout.segment_number(stop, size)
    missing = []
    for segno in range(first, last + 1):
        # A timeline switch inside the backup is rare; the segment may be on either timeline.
        candidates = [layout.segment_name(tli, segno * size, size) for tli in dict.fromkeys((first_tli, last_tli))]
        if not any(name in names for name in candidates):
            missing.append(candidates[-1])
    return missing
