"""An artifact's stored bytes read back through the decoding stack and checked against its record."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

import pyrage
import zstandard

from opskit.catalog import Artifact
from opskit.core.errors import ObjectNotFound, RestoreFailed, VerificationFailed
from opskit.pipeline import (
    Discard,
    HashingReader,
    HashingWriter,
    Progress,
    StageClock,
    StoreResult,
    StreamStats,
    TimedWriter,
    _NonClosing,
    identity_fingerprints,
    pump,
)
from opskit.storage.base import CHUNK_SIZE, Storage

# The stages age's decryption drives from inside its own call (reading the object, decoding, writing on).
READ_STAGES = ("download", "sha256 stored", "zstd", "sha256 plain", "hand-off")


def check_can_decrypt(artifact: Artifact, identities: Sequence[Any], backup_id: str = "") -> None:
    """Raise RestoreFailed (exit 4) when ``artifact`` is encrypted and none of ``identities`` fits.

    Done before any data moves, so a wrong key leaves no partial restore behind.
    """
    if not artifact.encryption:
        return
    wanted = sorted(artifact.encryption.get("recipients", []))
    if not identities:
        raise RestoreFailed(
            f"backup {backup_id} is encrypted to recipients {wanted}; no identity is configured",
            hint="set [encryption] identity to a reference to the age private key",
        )
    if wanted and not set(wanted) & identity_fingerprints(identities):
        raise RestoreFailed(
            f"backup {backup_id} is encrypted to recipients {wanted}; the configured identity matches none",
            hint="configure the age identity whose public key was a recipient when the backup was taken",
        )


def read_artifact(
    storage: Storage,
    artifact: Artifact,
    sink: Any,
    *,
    identities: Sequence[Any] = (),
    backup_id: str = "",
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> StoreResult:
    """Stream an artifact out of storage, decrypt and decompress it into ``sink``, checking both hashes.

    Raises RestoreFailed when the artifact is encrypted and no identity fits (exit 4),
    VerificationFailed when a size or sha256 differs from the manifest, the object is missing
    or its age payload is corrupt (exit 5), and StorageError for other storage problems. The
    result's ``cpu`` holds this thread's CPU seconds per stage: ``download``, ``sha256 stored``,
    ``age``, ``zstd``, ``sha256 plain`` and ``hand-off`` (writing into ``sink``, and whatever
    the sink does in this thread).
    """
    check_can_decrypt(artifact, identities, backup_id)
    clock = StageClock()
    plain = HashingWriter(
        _NonClosing(sink), progress=progress, clock=clock, hash_stage="sha256 plain", write_stage="hand-off"
    )
    decompressor = TimedWriter(
        zstandard.ZstdDecompressor().stream_writer(cast(BinaryIO, plain), write_size=CHUNK_SIZE, closefd=False),
        clock,
        "zstd",
        nested=("sha256 plain", "hand-off"),
    )
    try:
        with storage.reader(artifact.key) as raw:
            stored = HashingReader(raw, cancel=cancel, clock=clock, read_stage="download", hash_stage="sha256 stored")
            try:
                if artifact.encryption:
                    _decrypt(artifact, backup_id, stored, decompressor, identities, clock)
                else:
                    pump(stored, decompressor)
                decompressor.finish()
            except zstandard.ZstdError as exc:
                raise VerificationFailed(
                    f"artifact '{artifact.key}' of backup {backup_id} does not decompress: {exc}",
                    hint="the object is corrupt; restore another backup or a copy from another storage",
                ) from exc
            # Drain whatever the decoder did not need, so the stored hash covers the whole object.
            pump(stored, Discard())
    except ObjectNotFound as exc:
        # The manifest lists it, so the backup is incomplete: the data is wrong (5), not the run (4).
        raise missing_artifact(artifact, backup_id, storage.name) from exc
    result = StoreResult(plain=plain.stats(), stored=stored.stats(), cpu=clock.rounded())
    check_stats(artifact, result, backup_id)
    return result


def missing_artifact(artifact: Artifact, backup_id: str, storage_name: str) -> VerificationFailed:
    """Return the error for an artifact the manifest lists but the storage does not hold (exit 5)."""
    return VerificationFailed(
        f"artifact '{artifact.key}' of backup {backup_id} is missing from storage '{storage_name}': "
        "the backup is incomplete",
        hint="restore another backup or a copy from another storage, and run 'opskit backup verify --all' "
        "to find other incomplete ones",
    )


class _Watched:
    """A file-like object's ``read``/``write`` passed through, remembering every exception it raised.

    pyrage reports a corrupt or truncated payload as a bare OSError, the same class a full spool
    disk or a closed pipe raises from our own side; what the wrapped object raised is ours. Every
    one is kept: after a failed write pyrage may write again, and the second error (zstd's, on a
    decoder left mid-frame) is not the one pyrage raises.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.raised: list[BaseException] = []

    def read(self, size: int = -1) -> bytes:
        """Return ``inner.read(size)``; remember what it raised."""
        try:
            return cast(bytes, self._inner.read(size))
        except BaseException as exc:
            self.raised.append(exc)
            raise

    def write(self, data: Any) -> int:
        """Return ``inner.write(data)``; remember what it raised."""
        try:
            return cast(int, self._inner.write(data))
        except BaseException as exc:
            self.raised.append(exc)
            raise

    def raised_this(self, exc: BaseException) -> bool:
        """Return True when ``exc`` is one of the exceptions the wrapped object raised."""
        return any(exc is mine for mine in self.raised)


def _decrypt(
    artifact: Artifact,
    backup_id: str,
    stored: HashingReader,
    decompressor: TimedWriter,
    identities: Sequence[Any],
    clock: StageClock,
) -> None:
    """Decrypt ``stored`` into ``decompressor`` with age, adding age's own CPU time to ``clock``.

    Raises VerificationFailed (5) naming the object when the payload is corrupt or truncated,
    RestoreFailed (4) when the identity does not fit; what the storage or the sink raised passes.
    """
    source, sink = _Watched(stored), _Watched(decompressor)
    started = time.thread_time()
    try:
        pyrage.decrypt_io(source, sink, list(identities))
    except pyrage.DecryptError as exc:
        raise _decrypt_failure(artifact, backup_id, stored, exc) from exc
    except OSError as exc:
        if source.raised_this(exc) or sink.raised_this(exc):
            raise  # the storage's read or the sink's write failed, not the payload
        raise _payload_failure(artifact, backup_id, stored, exc) from exc
    spent = time.thread_time() - started
    clock.add("age", max(0.0, spent - clock.total(*READ_STAGES)))


def _payload_failure(artifact: Artifact, backup_id: str, stored: HashingReader, exc: OSError) -> VerificationFailed:
    # The identity fitted (a wrong one is a DecryptError before any payload is read): the bytes are bad.
    pump(stored, Discard())
    changed = stored.stats().sha256 != artifact.sha256
    what = "stored sha256 mismatch (object is corrupt or truncated)" if changed else "the age payload is corrupt"
    return VerificationFailed(
        f"artifact '{artifact.key}' of backup {backup_id} does not decrypt: {what}: {exc}",
        hint="the object is corrupt; restore another backup or a copy from another storage",
    )


def _decrypt_failure(artifact: Artifact, backup_id: str, stored: HashingReader, exc: Exception) -> Exception:
    # A wrong key and a corrupted object both surface as DecryptError; the stored hash tells them apart.
    pump(stored, Discard())
    if stored.stats().sha256 != artifact.sha256:
        return VerificationFailed(
            f"artifact '{artifact.key}' of backup {backup_id}: stored sha256 mismatch (object is corrupt): {exc}",
            hint="restore another backup or a copy from another storage",
        )
    return RestoreFailed(
        f"backup {backup_id} is encrypted to recipients {list((artifact.encryption or {}).get('recipients', []))}; "
        f"decryption with the configured identity failed: {exc}",
        hint="configure the age identity whose public key was a recipient when the backup was taken",
    )


def check_stats(artifact: Artifact, result: StoreResult, backup_id: str = "") -> None:
    """Raise VerificationFailed naming the artifact and the check when a size or hash differs."""
    checks = (
        ("stored size", artifact.size, result.stored.size),
        ("stored sha256", artifact.sha256, result.stored.sha256),
        ("plain size", artifact.plain_size, result.plain.size),
        ("plain sha256", artifact.plain_sha256, result.plain.sha256),
    )
    for name, expected, actual in checks:
        if expected != actual:
            raise VerificationFailed(
                f"artifact '{artifact.key}' of backup {backup_id}: {name} mismatch (expected {expected}, got {actual})",
                hint="the object is corrupt or incomplete; restore another backup or a copy from another storage",
            )


def hash_stored(
    storage: Storage, artifact: Artifact, cancel: threading.Event | None = None, progress: Progress | None = None
) -> StreamStats:
    """Stream an artifact and return its stored size and sha256 (needs no key); ``progress`` counts the bytes."""
    with storage.reader(artifact.key) as raw:
        reader = HashingReader(raw, cancel=cancel, progress=progress)
        pump(reader, Discard())
    return reader.stats()
