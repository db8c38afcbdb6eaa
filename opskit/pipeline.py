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

import contextlib
import fcntl
import hashlib
import io
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

import pyrage
import zstandard

from opskit.core.errors import BackupFailed, Cancelled, ConfigError
from opskit.secrets.references import Secret
from opskit.storage.base import CHUNK_SIZE, Storage

Progress = Callable[[int], None]


# Linux lets an unprivileged process grow a pipe to /proc/sys/fs/pipe-max-size (1 MiB by
# default): pg_dump then writes, and we read, up to 1 MiB per system call instead of 64 KiB.
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class StreamStats:
    """Byte count and sha256 of a stream."""

    size: int
    sha256: str


class StageClock:
    """CPU seconds per stage of one stream, summed from ``time.thread_time()`` around each call.

    Two clock reads per 1 MiB chunk and stage: cheap enough to keep on in every run, so a
    manifest says where a backup's CPU went (``extra.cpu``) without a benchmark build.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` of CPU to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def total(self, *stages: str) -> float:
        """Return the CPU seconds of ``stages`` together."""
        return sum(self.seconds.get(stage, 0.0) for stage in stages)

    def timed(self, stage: str, nested: tuple[str, ...], call: Callable[..., Any], *args: Any) -> Any:
        """Return ``call(*args)``, adding its CPU to ``stage`` minus what it added to the ``nested`` stages."""
        before = self.total(*nested)
        started = time.thread_time()
        result = call(*args)
        elapsed = time.thread_time() - started
        self.add(stage, elapsed - (self.total(*nested) - before))
        return result

    def rounded(self) -> dict[str, float]:
        """Return the stages' CPU seconds rounded to milliseconds (as a manifest records them)."""
        return {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}


class HashingReader(io.RawIOBase):
    """A readable that hashes and counts what passes through; optionally cancellable and reporting progress.

    With a ``clock``, the time spent reading ``source`` is added to stage ``read_stage``
    and the hashing to ``hash_stage``.
    """

    def __init__(
        self,
        source: Any,
        cancel: threading.Event | None = None,
        progress: Progress | None = None,
        clock: StageClock | None = None,
        read_stage: str = "read",
        hash_stage: str = "sha256",
    ) -> None:
        super().__init__()
        self._source = source
        self._hash = hashlib.sha256()
        self.size = 0
        self._cancel = cancel
        self._progress = progress
        self._clock = clock
        self._stages = (read_stage, hash_stage)
        # Read straight into the caller's buffer when the source is a real file or pipe (pg_dump's
        # stdout): one copy fewer per chunk. Not for any object with a readinto attribute: an
        # io.RawIOBase that implements only read() has one that raises NotImplementedError.
        readers = (io.BufferedReader, io.FileIO, io.BytesIO)
        self._readinto = source.readinto if isinstance(source, readers) else None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        """Return up to ``size`` bytes (all that is left when negative), hashed and counted.

        zstd's stream reader calls ``read``, not ``readinto``. RawIOBase's own ``read`` would
        fill a fresh bytearray and copy it into a fresh bytes object: two 1 MiB allocations per
        chunk, which glibc returns to the kernel and faults back in (~0.5 CPU s per 283 MiB,
        most of it system time: docs/benchmarks.md). The source's own bytes object is passed on instead.
        """
        if size is None or size < 0:
            return self.readall()
        self._check_cancel()
        started = time.thread_time() if self._clock is not None else 0.0
        data = self._source.read(size) or b""
        self._account(data, started)
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        self._check_cancel()
        view = memoryview(buffer).cast("B")
        started = time.thread_time() if self._clock is not None else 0.0
        if self._readinto is not None:
            count = self._readinto(view) or 0
        else:
            data = self._source.read(len(view))
            count = len(data) if data else 0
            view[:count] = data
        self._account(view[:count], started)
        return count

    def _check_cancel(self) -> None:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled("the run was cancelled (shutdown requested); nothing was committed")

    def _account(self, data: Any, started: float) -> None:
        """Hash and count ``data``, just read; add the read and hash times to the clock."""
        count = len(data)
        if not count:
            return
        read = time.thread_time() if self._clock is not None else 0.0
        self._hash.update(data)
        if self._clock is not None:
            hashed = time.thread_time()
            self._clock.add(self._stages[0], read - started)
            self._clock.add(self._stages[1], hashed - read)
        self.size += count
        if self._progress is not None:
            self._progress(count)

    def stats(self) -> StreamStats:
        """Return the size and sha256 of everything read so far."""
        return StreamStats(self.size, self._hash.hexdigest())


class HashingWriter(io.RawIOBase):
    """A writable that hashes and counts what passes through to ``sink``."""

    def __init__(
        self,
        sink: Any,
        progress: Progress | None = None,
        clock: StageClock | None = None,
        hash_stage: str = "sha256",
        write_stage: str = "write",
    ) -> None:
        super().__init__()
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0
        self._progress = progress
        self._clock = clock
        self._stages = (hash_stage, write_stage)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        started = time.thread_time() if self._clock is not None else 0.0
        self._hash.update(view)
        hashed = time.thread_time() if self._clock is not None else 0.0
        self.size += len(view)
        self._sink.write(view)
        if self._clock is not None:
            self._clock.add(self._stages[0], hashed - started)
            self._clock.add(self._stages[1], time.thread_time() - hashed)
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
            raise ConfigError(
                f"encryption recipient '{text}' is not a valid age public key: {exc}",
                hint="copy it again from 'age-keygen -y' of its identity; nothing was written",
            ) from exc
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
    """Hashes of the plain bytes read from the source and of the bytes stored; CPU seconds per stage."""

    plain: StreamStats
    stored: StreamStats
    cpu: dict[str, float] = field(default_factory=dict)


class _TimedReader(io.RawIOBase):
    """Times ``read`` calls on ``source`` (the zstd reader) into ``stage``, minus the nested stages it drives."""

    def __init__(self, source: Any, clock: StageClock, stage: str, nested: tuple[str, ...]) -> None:
        super().__init__()
        self._source = source
        self._clock = clock
        self._stage = stage
        self._nested = nested

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return cast(bytes, self._clock.timed(self._stage, self._nested, self._source.read, size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


class TimedWriter(io.RawIOBase):
    """Times ``write`` calls on ``sink`` (the zstd decoder) into ``stage``, minus the nested stages it drives."""

    def __init__(self, sink: Any, clock: StageClock, stage: str, nested: tuple[str, ...]) -> None:
        super().__init__()
        self._sink = sink
        self._clock = clock
        self._stage = stage
        self._nested = nested

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._clock.timed(self._stage, self._nested, self._sink.write, data)
        return len(data)

    def finish(self) -> None:
        """Flush ``sink`` (not ``flush``: IOBase's close would run it again, on a decoder that may have failed)."""
        self._clock.timed(self._stage, self._nested, self._sink.flush)


def grow_pipe(source: Any) -> None:
    """Grow ``source``'s pipe (either end) to PIPE_SIZE when it is one (best effort: a smaller pipe only costs syscalls)."""
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fcntl.fcntl(source.fileno(), F_SETPIPE_SZ, PIPE_SIZE)


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
    aborted and nothing is visible. Returns both streams' stats and the CPU seconds of each
    stage (``StoreResult.cpu``: ``read``, ``sha256 plain``, ``zstd``, ``age``, ``sha256
    stored``, ``write`` in the calling thread; ``other threads``: zstd's workers, the
    upload's, anything else the process ran meanwhile). Raises BackupFailed/StorageError;
    Cancelled on cancel.
    """
    clock = StageClock()
    process_started = process_cpu()
    thread_started = time.thread_time()
    grow_pipe(source)
    plain = HashingReader(
        source, cancel=cancel, progress=progress, clock=clock, read_stage="read", hash_stage="sha256 plain"
    )
    # Frame checksums let the decoder itself reject a corrupted object, before pg_restore sees junk.
    compressor = zstandard.ZstdCompressor(level=level, threads=threads if threads else -1, write_checksum=True)
    compressed = _TimedReader(
        compressor.stream_reader(cast(BinaryIO, plain), read_size=CHUNK_SIZE, closefd=False),
        clock,
        "zstd",
        nested=("read", "sha256 plain"),
    )
    age_recipients = parse_recipients(recipients) if recipients else []
    with storage.writer(key, immutable=True) as out:
        stored = HashingWriter(out, clock=clock, hash_stage="sha256 stored", write_stage="write")
        if age_recipients:
            started = time.thread_time()
            try:
                pyrage.encrypt_io(compressed, stored, age_recipients)
            except pyrage.EncryptError as exc:
                raise BackupFailed(f"encrypting '{key}' failed: {exc}") from exc
            spent = time.thread_time() - started
            clock.add("age", max(0.0, spent - clock.total("read", "sha256 plain", "zstd", "sha256 stored", "write")))
        else:
            pump(compressed, stored)
        if before_commit is not None:
            before_commit()
    own = time.thread_time() - thread_started
    clock.add("other threads", max(0.0, process_cpu() - process_started - own))
    return StoreResult(plain=plain.stats(), stored=stored.stats(), cpu=clock.rounded())


def process_cpu() -> float:
    """Return this process's user + system CPU seconds so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
