"""What the S3, GCS and Azure backends share: URLs, keys under a prefix, parts, streams.

- :func:`split_url` and :class:`KeySpace` turn ``s3://bucket/some/prefix`` and a relative
  key into the provider's object name and back.
- :class:`PartSchedule` says how big part N of an upload is: parts grow as an upload gets
  long, so a 5 TiB object fits the provider's part-count limit while a small backup
  still uses small parts (memory is one part per in-flight upload, not the object).
- :class:`PartWriter` cuts a stream of writes into parts and uploads them on a small
  thread pool, at most ``in_flight`` parts at a time, so the producer (pg_dump, zstd)
  keeps running while a part is on the wire.
- :class:`ChunkReader` turns a provider's chunk iterator into a readable stream that
  resumes from the current offset after a transient error instead of failing the read.
"""

from __future__ import annotations

import contextvars
import io
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, Generic, TypeVar, cast

from opskit.core.errors import ConfigError, OpskitError, StorageError
from opskit.storage.base import CHUNK_SIZE, ObjectInfo
from opskit.storage.retry import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Buffer

R = TypeVar("R")

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB


def split_url(url: str, scheme: str, container_word: str = "bucket") -> tuple[str, str]:
    """Return (bucket, prefix) of ``scheme://bucket/prefix``; the prefix has no outer slashes.

    Raises ConfigError when the URL has another scheme or no bucket.
    """
    head, sep, rest = url.partition("://")
    if head != scheme or not sep:
        raise ConfigError(f"not a {scheme}:// URL: {url}")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{url} names no {container_word}", hint=f"use {scheme}://{container_word}/prefix")
    return bucket, prefix.strip("/")


@dataclass(frozen=True)
class KeySpace:
    """Maps keys relative to a storage's prefix onto full object names, and back."""

    prefix: str

    def full(self, key: str) -> str:
        """Return the object name of ``key``.

        Raises StorageError for an empty key or one with ``..`` segments: the local backend
        cannot store those, and the contract is the same for every backend.
        """
        clean = key.strip("/")
        if not clean or ".." in clean.split("/"):
            raise StorageError(f"invalid object key '{key}'")
        return f"{self.prefix}/{clean}" if self.prefix else clean

    def list_prefix(self, prefix: str) -> str:
        """Return the object-name prefix that selects every key starting with ``prefix``.

        The storage's own prefix always ends with ``/`` here, so ``s3://b/backups`` never
        lists ``backups2/...``.
        """
        rel = prefix.lstrip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def relative(self, name: str) -> str | None:
        """Return the key of object ``name``, or None when it lies outside the prefix."""
        if not self.prefix:
            return name
        head = self.prefix + "/"
        return name[len(head) :] if name.startswith(head) else None


@dataclass(frozen=True)
class PartSchedule:
    """The size of each part of a multipart upload whose total size is not known in advance.

    Part N (1-based) is ``base * 2 ** ((N - 1) // grow_every)``, capped at ``max_part``.
    The defaults fit S3 (at most 10,000 parts of at most 5 GiB): with a base of at least
    5 MiB and doubling every 900 parts, 10,000 parts hold more than 5 TiB, while an
    object under ``base * 900`` (7 GiB at S3's 8 MiB default) never grows a part, which
    keeps the memory an upload holds flat for all but the largest databases.
    """

    base: int
    max_part: int = 5 * GiB
    max_parts: int = 10_000
    grow_every: int = 900

    def size(self, part_number: int) -> int:
        """Return the size in bytes of part ``part_number`` (1-based)."""
        doublings = min((part_number - 1) // self.grow_every, 40)
        return min(self.base << doublings, self.max_part)

    def capacity(self) -> int:
        """Return the largest object, in bytes, that fits in ``max_parts`` parts."""
        total = 0
        for start in range(1, self.max_parts + 1, self.grow_every):
            count = min(self.grow_every, self.max_parts - start + 1)
            total += self.size(start) * count
        return total


class PartWriter(io.RawIOBase, Generic[R]):
    """A writable stream that uploads itself in parts as it is written.

    ``upload_part(number, data)`` uploads one part and returns what completion needs (an
    ETag, a block id); it must be safe to call from a worker thread and is expected to
    retry on its own. ``upload_whole(data)`` stores an object smaller than one part in a
    single request. At most ``in_flight`` parts are uploading while the next one fills, so
    memory is bounded by ``(in_flight + 1) * part size``.

    Call :meth:`finish` after the last write; it returns the parts' results in order (an
    empty list when ``upload_whole`` was used). Call :meth:`cancel` on error.
    """

    def __init__(
        self,
        schedule: PartSchedule,
        upload_part: Callable[[int, bytes], R],
        upload_whole: Callable[[bytes], None],
        in_flight: int = 2,
    ) -> None:
        super().__init__()
        self._schedule = schedule
        self._upload_part = upload_part
        self._upload_whole = upload_whole
        self._in_flight = max(1, in_flight)
        self._buffer = bytearray()
        self._next_part = 1
        self._pending: deque[Future[R]] = deque()
        self._results: list[R] = []
        self._pool: ThreadPoolExecutor | None = None
        self.bytes_written = 0

    def writable(self) -> bool:
        """Return True: this stream is for writing."""
        return True

    def write(self, data: Buffer) -> int:
        """Buffer ``data``, uploading every part that becomes full; return its length.

        Raises the error of a part upload that failed in the background.
        """
        view = memoryview(data).cast("B")
        self._buffer += view
        self.bytes_written += len(view)
        # Hold a full part back until more data arrives: only then is it known not to be the
        # last one, which matters because an object of exactly one part is stored whole.
        while len(self._buffer) > self._schedule.size(self._next_part):
            size = self._schedule.size(self._next_part)
            # Wait for a free upload slot before cutting the part, and cut it with one copy, so at
            # most in_flight parts, the part being cut and the buffer are in memory at once.
            self._wait_for_slot()
            with memoryview(self._buffer) as buffer:
                part = bytes(buffer[:size])
            del self._buffer[:size]
            self._submit(part)
        return len(view)

    def _wait_for_slot(self) -> None:
        while len(self._pending) >= self._in_flight:
            self._results.append(self._pending.popleft().result())

    def tell(self) -> int:
        """Return the number of bytes written so far."""
        return self.bytes_written

    def close(self) -> None:
        """Mark the stream closed; nothing is committed or aborted here.

        Pipeline stages (zstd, age) close their sink when they finish; the upload is
        completed or aborted by the storage's ``writer()`` context manager instead.
        """
        super().close()

    def _submit(self, part: bytes) -> None:
        if self._next_part > self._schedule.max_parts:
            raise StorageError(
                f"object exceeds {self._schedule.max_parts} parts",
                hint="raise the storage's part_size",
            )
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="opskit-upload")
        self._wait_for_slot()
        # Run the part in a copy of the caller's context so structlog's bound target and
        # backup_id appear on the retry warnings logged from the worker thread.
        context = contextvars.copy_context()
        self._pending.append(self._pool.submit(context.run, self._upload_part, self._next_part, part))
        self._next_part += 1

    def finish(self) -> list[R]:
        """Upload what is buffered and wait for every part; return the parts' results in order."""
        if self._next_part == 1:
            self._upload_whole(bytes(self._buffer))
            self._buffer.clear()
            return []
        self._submit(bytes(self._buffer))
        self._buffer.clear()
        while self._pending:
            self._results.append(self._pending.popleft().result())
        self._shutdown()
        return self._results

    def cancel(self) -> None:
        """Drop the buffer and wait for in-flight parts to end (their errors are ignored)."""
        self._buffer.clear()
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class ChunkReader(io.RawIOBase):
    """A readable stream over an object, fetched as an iterator of byte chunks.

    ``open_at(offset)`` starts a download at ``offset`` and returns its chunks. When
    reading fails with an error ``policy`` deems transient, the download is restarted at
    the current offset (within the policy's attempts) instead of failing the whole read.
    ``translate`` turns the final SDK exception into an opskit error.
    """

    def __init__(
        self,
        open_at: Callable[[int], Iterator[bytes]],
        policy: RetryPolicy,
        translate: Callable[[BaseException], OpskitError],
        key: str,
    ) -> None:
        super().__init__()
        self._open_at = open_at
        self._policy = policy
        self._translate = translate
        self._key = key
        self._offset = 0
        self._chunk = b""
        self._pos = 0
        self._done = False
        self._chunks = self._open(0)

    def _open(self, offset: int) -> Iterator[bytes]:
        try:
            return self._policy.call(lambda: iter(self._open_at(offset)), "read", self._key)
        except OpskitError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def readable(self) -> bool:
        """Return True: this stream is for reading."""
        return True

    def readinto(self, buffer: Buffer) -> int:
        """Fill ``buffer`` from the current chunk, fetching the next one when it is used up.

        Returns the number of bytes read, 0 at the end of the object. Raises StorageError.
        """
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        if self._pos >= len(self._chunk) and (self._done or not self._next_chunk()):
            return 0
        count = min(len(view), len(self._chunk) - self._pos)
        view[:count] = self._chunk[self._pos : self._pos + count]
        self._pos += count
        self._offset += count
        return count

    def _next_chunk(self) -> bool:
        failures = 0
        while True:
            try:
                chunk = next(self._chunks, None)
            except Exception as exc:
                failures += 1
                if failures >= self._policy.max_attempts or not self._policy.is_transient(exc):
                    raise self._translate(exc) from exc
                wait = self._policy.backoff(failures)
                self._policy.log_retry("read", self._key, failures, exc, wait)
                time.sleep(wait)
                # Resume where the broken download stopped rather than starting over.
                self._chunks = self._open(self._offset)
                continue
            if chunk is None:
                self._done = True
                return False
            if chunk:
                self._chunk = bytes(chunk)
                self._pos = 0
                return True


def open_reader(reader: ChunkReader) -> io.BufferedReader:
    """Return ``reader`` wrapped for efficient ``read(n)`` calls of any size."""
    return io.BufferedReader(reader, buffer_size=CHUNK_SIZE)


@contextmanager
def resuming_stream(
    open_at: Callable[[int], Iterator[bytes]],
    policy: RetryPolicy,
    translate: Callable[[BaseException], OpskitError],
    key: str,
) -> Iterator[BinaryIO]:
    """Yield a buffered stream over an object that resumes broken downloads (see ChunkReader)."""
    stream = open_reader(ChunkReader(open_at, policy, translate, key))
    try:
        yield cast(BinaryIO, stream)
    finally:
        stream.close()


Page = tuple[list[tuple[str, int, datetime]], str | None]


def list_paged(keys: KeySpace, fetch_page: Callable[[str | None], Page]) -> Iterator[ObjectInfo]:
    """Yield ObjectInfo for every object, calling ``fetch_page(token)`` once per page until no token.

    ``fetch_page`` returns ((full name, size, modified) items, next token); each call is one
    retried request, so a failure on page 7 does not re-list pages 1 to 6.
    """
    token: str | None = None
    while True:
        items, token = fetch_page(token)
        for name, size, modified in items:
            relative = keys.relative(name)
            if relative:
                yield ObjectInfo(relative, size, modified)
        if not token:
            return
