"""``opskit wal push`` and ``opskit wal fetch``: PostgreSQL's archive_command and restore_command.

PostgreSQL's rules for both (https://www.postgresql.org/docs/current/continuous-archiving.html):
an ``archive_command`` must return 0 only once the file is safely stored, must refuse to
overwrite a different file of the same name, and may be called again for a file it already
archived (after a crash), so the same bytes twice must succeed. A ``restore_command`` must
exit non-zero, quietly, for a file the archive does not have: recovery asks for files past
the end of the archive (and for history files that may not exist) to learn where WAL ends.

How push keeps those rules on any storage, without reading an encrypted object back:

1. ``<name>.sha256`` (the plain bytes' sha256 and size) is created if absent. If it was
   there already, its hash is compared: the same bytes continue (a retry after a crash),
   different bytes fail with exit 4 and nothing is overwritten.
2. ``<name>.zst[.age]`` is created if absent (zstd with frame checksums, then age when
   recipients are configured). A push killed between the two steps leaves the record
   alone; the retry finds the same hash and writes the object.

A segment is 16 MiB by default, so it is compressed in memory and stored with
``Storage.create`` (one atomic create-if-absent request on every backend).

Fetch reads ahead. While the data directory recovers (``recovery.signal`` or ``standby.signal``),
a segment fetched from the archive leaves a background reader behind that keeps the next
segments ready in ``<dir of %p>/opskit-prefetch/`` while the server replays
(``opskit.wal.readahead``); the restore_command's shell test (:func:`with_read_ahead`) takes
them with a rename and answers the misses the reader has just seen, so most of the server's
calls start no interpreter. Outside a recovery, a fetch of segment N reads the next
``PREFETCH_SEGMENTS`` at once (verified, in threads), a later fetch of one of them is a rename,
and the first miss removes the directory. Either way nothing is left in ``pg_wal`` after recovery.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyrage
import zstandard

from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import (
    BackupFailed,
    ConfigError,
    ObjectNotFound,
    OpskitError,
    RestoreFailed,
    VerificationFailed,
)
from opskit.core.log import get_logger
from opskit.pipeline import parse_identities, parse_recipients
from opskit.storage import open_storage
from opskit.storage.base import Storage
from opskit.wal import layout, readahead

log = get_logger(__name__)

# How many segments one fetch reads ahead (8 x 16 MiB on disk at most), and in how many threads.
PREFETCH_SEGMENTS = 8
PREFETCH_THREADS = 4
PREFETCH_DIR = "opskit-prefetch"
# ``wal fetch`` exits 128 + its opskit code on any failure but "not archived" (exit 1): PostgreSQL
# aborts recovery when restore_command exits above 125, and takes any lower code for the end of
# the archive, ending recovery there and promoting (cli/wal.py, restore/pitr.py read it back).
ABORT_EXIT_BASE = 128


@dataclass(frozen=True)
class PushResult:
    """One WAL file in the archive: its name, key, sizes, and whether an earlier push had stored it."""

    name: str
    key: str
    plain_size: int
    stored_size: int
    sha256: str
    already_archived: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the result."""
        return {
            "name": self.name,
            "key": self.key,
            "plain_size": self.plain_size,
            "stored_size": self.stored_size,
            "sha256": self.sha256,
            "already_archived": self.already_archived,
        }


def archive_storage(ctx: AppContext, target: TargetConfig, storage: str | None = None) -> Storage:
    """Return the storage WAL of ``target`` is read from: ``storage`` when named, else its primary storage.

    ``wal push`` always archives to the primary; ``wal fetch --storage`` (the restore_command
    of ``restore --pitr --storage``) reads the storage the base backup came from, e.g. an
    offsite copy. Raises ConfigError for an unknown storage name.
    """
    return ctx.storage(storage or target.primary_storage)


def run(ctx: AppContext, path: str, target: str | None = None) -> PushResult:
    """Archive the WAL file at ``path`` (PostgreSQL's ``%p``) and return what was stored.

    Raises ConfigError (2) for a file that is not WAL or cannot be read, BackupFailed (4)
    when a different file of the same name is already archived, StorageError (4) or
    UnreachableError (3) when the storage fails. PostgreSQL retries a failed push.
    """
    target_config = ctx.target(target)
    name = os.path.basename(path)
    if not layout.is_archivable_name(name):
        raise ConfigError(
            f"'{path}' is not a WAL file (expected a segment, .history, .backup or .partial name)",
            hint="set archive_command = 'opskit wal push %p' (PostgreSQL passes the path as %p)",
        )
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read WAL file '{path}': {exc.strerror or exc}") from exc
    return push_bytes(ctx, target_config, name, data)


def push_bytes(ctx: AppContext, target: TargetConfig, name: str, data: bytes) -> PushResult:
    """Store the WAL file ``name`` with content ``data`` in ``target``'s archive (see the module docstring).

    Returns the PushResult; raises BackupFailed (4) on a conflicting earlier file, StorageError on storage failures.
    """
    storage = archive_storage(ctx, target)
    digest = hashlib.sha256(data).hexdigest()
    record = json.dumps({"name": name, "sha256": digest, "size": len(data)}, sort_keys=True).encode() + b"\n"
    hash_key = layout.hash_key(target.name, name)
    first = storage.create(hash_key, record)
    if not first:
        stored = read_hash_record(storage, target.name, name)
        if stored is not None and stored.get("sha256") != digest:
            raise BackupFailed(
                f"WAL file {name} is already archived for target '{target.name}' with different content "
                f"(stored sha256 {stored.get('sha256')}, this file {digest}); nothing was overwritten",
                hint="two clusters may archive to one target: give each cluster its own target",
            )
    recipients = ctx.config.encryption.recipients
    key = layout.object_key(target.name, name, bool(recipients))
    already = not first and storage.exists(key)
    stored_size = 0
    if not already:
        compressor = zstandard.ZstdCompressor(level=ctx.config.compression.level, write_checksum=True)
        payload = compressor.compress(data)
        if recipients:
            payload = pyrage.encrypt(payload, parse_recipients(recipients))
        stored_size = len(payload)
        if not storage.create(key, payload):
            already = True  # a concurrent push of the same file won the create; its hash matched ours
    log.info("wal archived", target=target.name, wal=name, already_archived=already, size=len(data))
    return PushResult(name, key, len(data), stored_size, digest, already)


def read_hash_record(storage: Storage, target: str, name: str) -> dict[str, Any] | None:
    """Return the stored ``{"sha256", "size"}`` record of WAL file ``name``, or None when it has none.

    Raises VerificationFailed (5) when the record is not valid JSON, StorageError on storage failures.
    """
    try:
        with storage.reader(layout.hash_key(target, name)) as inp:
            payload = inp.read()
    except ObjectNotFound:
        return None
    try:
        record = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationFailed(f"the sha256 record of WAL file {name} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise VerificationFailed(f"the sha256 record of WAL file {name} is not an object")
    return record


def fetch(
    ctx: AppContext,
    name: str,
    destination: str,
    target: str | None = None,
    prefetch: int = PREFETCH_SEGMENTS,
    storage: str | None = None,
) -> bool:
    """Restore the archived WAL file ``name`` (``%f``) to ``destination`` (``%p``); return False when absent.

    The file appears at ``destination`` complete or not at all (written beside, then
    renamed). A segment read ahead is taken from the read-ahead directory, waiting for the
    background reader when it is reading it. After a segment from the archive, the next
    ones are read ahead: by a background reader while the data directory recovers
    (``opskit.wal.readahead``), else the next ``prefetch`` ones at once (module docstring).
    ``storage`` names the storage to read, the read-ahead's too (default: the target's primary).
    Raises RestoreFailed (4) when it is encrypted and no identity fits, VerificationFailed (5)
    when its bytes differ from the recorded sha256, StorageError on storage failures: only a
    file the archive lacks returns False, since ``wal fetch`` turns every raise into an exit
    above 125 (``ABORT_EXIT_BASE``) that aborts the recovery instead of ending it early.
    """
    target_config = ctx.target(target)
    dest = Path(destination)
    spool = dest.parent / PREFETCH_DIR
    if _take_prefetched(spool, name, dest):
        # No read-ahead here: the next batch is read (in parallel) by the fetch that finds the
        # directory empty, not one segment per call, which would be as slow as no read-ahead.
        log.debug("wal fetched from the read-ahead", target=target_config.name, wal=name)
        return True
    ready = readahead.wait_for(spool, name)
    if ready is not None:
        if not ready:
            return False
        if _take_prefetched(spool, name, dest):
            return True
    data = archived_wal(ctx, archive_storage(ctx, target_config, storage), target_config.name, name)
    reader = readahead.reader_state(spool)
    if data is None:
        if reader is None:
            # Past the end of the archive (or a probe for a timeline that does not exist):
            # recovery is ending, and what was read ahead will not be asked for.
            shutil.rmtree(spool, ignore_errors=True)
        return False
    _write_file(dest, data, name)
    log.debug("wal fetched", target=target_config.name, wal=name, size=len(data))
    if not layout.is_segment_name(name):
        return True
    if reader is not None:
        readahead.restart_at(spool, name)  # asked for a segment outside its plan: another timeline
    elif not (readahead.recovering(spool) and _start_reader(ctx, target_config, name, len(data), spool, storage)):
        _prefetch(ctx, target_config.name, name, len(data), spool, prefetch, storage)
    return True


def archived_wal(ctx: AppContext, storage: Storage, target: str, name: str) -> bytes | None:
    """Return the plain bytes recovery gets for WAL file ``name``, or None when the archive lacks it.

    For a segment archived only as the streamer's last ``.partial`` (the one the primary was
    writing when it was lost), that partial: a prefix of the segment, padded as pg_receivewal
    pads it. Replaying it is what makes the RPO the partial interval, as Barman's partial
    restore does. Raises as :func:`read_wal`.
    """
    data = read_wal(ctx, storage, target, name)
    if data is None and layout.is_segment_name(name):
        data = read_wal(ctx, storage, target, name + ".partial")
        if data is not None:
            log.info("wal fetched from its partial segment", target=target, wal=name)
    return data


def _start_reader(
    ctx: AppContext, target: TargetConfig, name: str, segment_size: int, spool: Path, storage: str | None = None
) -> bool:
    """Leave the background reader of ``spool`` behind, reading ``storage`` after segment ``name``; return whether it started."""
    if segment_size <= 0 or segment_size & (segment_size - 1):
        return False

    def make_read() -> readahead.ReadWal:
        # In the reader process: a storage client of its own, nothing shared across the fork.
        store = open_storage(ctx.storage_config(storage or target.primary_storage))

        def read(wal: str) -> bytes | None:
            return archived_wal(ctx, store, target.name, wal)

        return read

    return readahead.start(make_read, name, segment_size, spool)


def with_read_ahead(restore_command: str) -> str:
    """Return ``restore_command`` (``... wal fetch ... %f %p``) behind a shell test that answers from the read-ahead.

    PostgreSQL runs the restore_command through ``/bin/sh`` once per file and waits for it;
    starting the interpreter costs about a third of a second of CPU, while a segment read
    ahead needs only a rename. So a file waiting in the read-ahead directory is moved into
    place by the shell (the last one before the end copied, as recovery asks for it more than
    once), a miss the background reader has just seen (a ``<name>.absent``
    marker holding the time it expires) is answered with exit 1, and anything else runs
    the command.
    """
    d = f'"$(dirname "%p")/{PREFETCH_DIR}'
    return (
        f'f={d}/%f"; if [ -f "$f" ] && mv "$f" "%p"; then exit 0; fi; '
        f'if [ -f "$f{readahead.KEEP_SUFFIX}" ] && cp "$f{readahead.KEEP_SUFFIX}" "%p"; then exit 0; fi; '
        f'm="$f{readahead.ABSENT_SUFFIX}"; '
        'if [ -f "$m" ] && [ "$(cat "$m" 2>/dev/null)" -gt "$(date +%s)" ] 2>/dev/null; '
        f"then exit 1; fi; {restore_command}"
    )


def _write_file(dest: Path, data: bytes, name: str) -> None:
    """Write ``data`` to ``dest`` complete or not at all. Raises RestoreFailed when it cannot."""
    tmp = dest.with_name(f".{dest.name}.opskit-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RestoreFailed(f"cannot write WAL file {name} to '{dest}': {exc.strerror or exc}") from exc


def _take_prefetched(spool: Path, name: str, dest: Path) -> bool:
    """Move ``name`` from the read-ahead directory to ``dest``; return False when it is not there."""
    try:
        os.replace(spool / name, dest)
    except FileNotFoundError:
        return False
    except OSError:
        return False  # e.g. another file system: fetch it from the archive instead
    return True


def _prefetch(
    ctx: AppContext, target: str, name: str, segment_size: int, spool: Path, count: int, storage: str | None = None
) -> None:
    """Read ahead the ``count`` segments after segment ``name`` of ``storage`` into ``spool``, stopping at the first absent one.

    Best effort: a failure here only costs the later fetch a round trip (it reads the
    segment itself and reports the error then).
    """
    if count <= 0 or not layout.is_segment_name(name) or segment_size <= 0 or segment_size & (segment_size - 1):
        return
    wanted = [n for n in layout.next_segments(name, segment_size, count) if not (spool / n).exists()]
    if not wanted:
        return
    target_config = ctx.target(target)
    store = archive_storage(ctx, target_config, storage)

    def read(segment: str) -> bytes | None:
        try:
            return read_wal(ctx, store, target_config.name, segment)
        except (OpskitError, OSError) as exc:  # read-ahead is an optimisation; the real fetch reports it
            log.debug("wal read-ahead failed", wal=segment, error=str(exc))
            return None

    with ThreadPoolExecutor(max_workers=PREFETCH_THREADS) as pool:
        for segment, data in zip(wanted, pool.map(read, wanted), strict=True):
            if data is None:
                break  # not archived (yet): the segments after it are not either
            try:
                spool.mkdir(exist_ok=True)
                _write_file(spool / segment, data, segment)
            except (OSError, RestoreFailed):
                break


def read_wal(ctx: AppContext, storage: Storage, target: str, name: str) -> bytes | None:
    """Return the plain bytes of the archived WAL file ``name``, or None when the archive lacks it.

    Raises RestoreFailed (4) when it is encrypted and no identity fits, VerificationFailed (5)
    when it does not decompress or differs from its recorded sha256.
    """
    for encrypted in (True, False):
        key = layout.object_key(target, name, encrypted)
        try:
            with storage.reader(key) as inp:
                payload = inp.read()
        except ObjectNotFound:
            continue
        if encrypted:
            payload = _decrypt(ctx, name, payload)
        try:
            data = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        except zstandard.ZstdError as exc:
            raise VerificationFailed(f"archived WAL file {name} does not decompress: {exc}") from exc
        record = read_hash_record(storage, target, name)
        if record is not None and record.get("sha256") != hashlib.sha256(data).hexdigest():
            raise VerificationFailed(
                f"archived WAL file {name} does not match its recorded sha256",
                hint="the object is corrupt; recovery cannot continue past it",
            )
        return data
    return None


def _decrypt(ctx: AppContext, name: str, payload: bytes) -> bytes:
    ref = ctx.config.encryption.identity
    if ref is None:
        raise RestoreFailed(
            f"archived WAL file {name} is encrypted; no identity is configured",
            hint="set [encryption] identity to a reference to the age private key",
        )
    try:
        return bytes(pyrage.decrypt(payload, parse_identities(ref.resolve())))
    except pyrage.DecryptError as exc:
        raise RestoreFailed(
            f"archived WAL file {name} cannot be decrypted with the configured identity: {exc}",
            hint="configure the age identity whose public key was a recipient when the WAL was archived",
        ) from exc


def newest_archived(storage: Storage, target: str) -> tuple[str, datetime] | None:
    """Return (name, stored time) of the newest archived WAL of ``target``, or None when there is none.

    ``name`` is the newest complete segment; the time is when the newest WAL reached the
    storage, a complete segment or the streamer's ``.partial`` of the one being written
    (``fetch`` serves that partial at the end of recovery). ``now - time`` is the RPO that
    point-in-time recovery offers. Raises StorageError when the archive cannot be listed.
    """
    newest_name: str | None = None
    newest_time: datetime | None = None
    for info in storage.list(layout.wal_prefix(target)):
        name = layout.name_of_key(info.key)
        if name is None:
            continue
        partial = name.endswith(".partial") and layout.is_segment_name(name[:24])
        if not partial and not layout.is_segment_name(name):
            continue
        if not partial and (newest_name is None or name > newest_name):
            newest_name = name
        if newest_time is None or info.modified > newest_time:
            newest_time = info.modified
    if newest_name is None or newest_time is None:
        return None  # a partial alone (the first segment still being written) restores nothing yet
    return (newest_name, newest_time)
