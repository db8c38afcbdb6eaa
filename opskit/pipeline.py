"""Streaming stages: hash, compress, encrypt, and their inverses.

Backup (pull, pumped at the end)::

    pg_dump stdout ─▶ HashingReader(plain) ─▶ zstd.stream_reader ─▶ [age encrypt_io] ─▶ HashingWriter(stored) ─▶ storage

Restore/verify (push)::

    storage ─▶ HashingReader(stored) ─▶ [age decrypt_io] ─▶ zstd.stream_writer ─▶ HashingWriter(plain) ─▶ sink

Every stage moves bounded chunks (``CHUNK_SIZE``), so memory does not grow with the
database. Both the plain and the stored bytes are hashed: ``verify`` checks the stored
hash with no key, and the plain hash proves decryption and decompression were complete
(a truncated zstd stream is not an error to the decoder, but it is a hash mismatch).
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import pyrage
import zstandard

from opskit.core.errors import BackupFailed, Cancelled, ConfigError
from opskit.secrets.references import Secret
from opskit.storage.base import CHUNK_SIZE, Storage

Progress = Callable[[int], None]


@dataclass(frozen=True)
class StreamStats:
    """Byte count and sha256 of a stream."""

    size: int
    sha256: str


class HashingReader(io.RawIOBase):
    """A readable that hashes and counts what passes through; optionally cancellable and reporting progress."""

    def __init__(self, source: Any, cancel: threading.Event | None = None, progress: Progress | None = None) -> None:
        super().__init__()
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0
        self._cancel = cancel
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("the run was cancelled (shutdown requested); nothing was committed")
        view = memoryview(buffer)
        data = self._source.read(len(view))
        if not data:
            return 0
        count = len(data)
        view[:count] = data
        self._hash.update(data)
        self.size += count
        if self._progress is not None:
            self._progress(count)
        return count

    def stats(self) -> StreamStats:
        """Return the size and sha256 of everything read so far."""
        return StreamStats(self.size, self._hash.hexdigest())


class HashingWriter(io.RawIOBase):
    """A writable that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: Any, progress: Progress | None = None) -> None:
        super().__init__()
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0
        self._progress = progress

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self.size += len(view)
        self._sink.write(view)
        if self._progress is not None:
            self._progress(len(view))
        return len(view)

    def stats(self) -> StreamStats:
        """Return the size and sha256 of everything written so far."""
        return StreamStats(self.size, self._hash.hexdigest())


def pump(reader: Any, writer: Any, chunk_size: int = CHUNK_SIZE) -> int:
    """Copy ``reader`` to ``writer`` in bounded chunks; return the number of bytes copied."""
    total = 0
    while True:
        chunk = reader.read(chunk_size)
        if not chunk:
            return total
        writer.write(chunk)
        total += len(chunk)


# --------------------------------------------------------------------------- age


def parse_recipients(recipients: Sequence[str]) -> list[Any]:
    """Return pyrage recipients for ``age1...`` strings. Raises ConfigError naming a bad one."""
    parsed = []
    for text in recipients:
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text))
        except Exception as exc:
            raise ConfigError(f"encryption recipient '{text}' is not a valid age public key: {exc}") from exc
    return parsed


def parse_identities(secret: Secret) -> list[Any]:
    """Return pyrage identities from an age identity file's text (comments and blank lines ignored).

    Raises ConfigError when no line is a valid ``AGE-SECRET-KEY-1...`` identity.
    """
    identities = []
    for line in secret.reveal().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception as exc:
            raise ConfigError(
                f"the age identity from {secret.reference} is not valid",
                hint="it must contain an AGE-SECRET-KEY-1... line, as written by 'opskit keygen' or age-keygen",
            ) from exc
    if not identities:
        raise ConfigError(f"the age identity from {secret.reference} contains no key")
    return identities


def recipient_fingerprint(recipient: str) -> str:
    """Return the fingerprint recorded in manifests for a recipient: the first 16 hex digits of its sha256."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode("ascii")).hexdigest()[:16]


def identity_fingerprints(identities: Sequence[Any]) -> set[str]:
    """Return the fingerprints of the recipients that ``identities`` can decrypt for."""
    return {recipient_fingerprint(str(identity.to_public())) for identity in identities}


# --------------------------------------------------------------------------- backup direction


@dataclass(frozen=True)
class StoreResult:
    """Hashes of the plain bytes read from the source and of the bytes stored."""

    plain: StreamStats
    stored: StreamStats


def compress_and_store(
    source: Any,
    storage: Storage,
    key: str,
    *,
    level: int = 3,
    threads: int = 0,
    recipients: Sequence[str] = (),
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
    before_commit: Callable[[], None] | None = None,
) -> StoreResult:
    """Stream ``source`` through sha256 -> zstd -> [age] -> sha256 into ``storage`` under ``key``.

    ``before_commit`` runs after the last byte is written and before the object is
    committed (the backup checks pg_dump's exit status there): if it raises, the upload is
    aborted and nothing is visible. Raises BackupFailed/StorageError; Cancelled on cancel.
    """
    plain = HashingReader(source, cancel=cancel, progress=progress)
    # Frame checksums let the decoder itself reject a corrupted object, before pg_restore sees junk.
    compressor = zstandard.ZstdCompressor(level=level, threads=threads if threads else -1, write_checksum=True)
    compressed = compressor.stream_reader(cast(BinaryIO, plain), read_size=CHUNK_SIZE, closefd=False)
    age_recipients = parse_recipients(recipients) if recipients else []
    with storage.writer(key, immutable=True) as out:
        stored = HashingWriter(out)
        if age_recipients:
            try:
                pyrage.encrypt_io(compressed, stored, age_recipients)
            except pyrage.EncryptError as exc:
                raise BackupFailed(f"encrypting '{key}' failed: {exc}") from exc
        else:
            pump(compressed, stored)
        if before_commit is not None:
            before_commit()
    return StoreResult(plain=plain.stats(), stored=stored.stats())


# --------------------------------------------------------------------------- restore direction


class _NonClosing(io.RawIOBase):
    """Forwards writes; ignores close() so zstd's writer cannot close the caller's sink."""

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sink.write(data)
        return len(data)


class Discard(io.RawIOBase):
    """A sink that drops every byte (hashing a stream is the point)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)
