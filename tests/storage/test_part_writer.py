"""PartWriter cuts a stream into parts; ChunkReader resumes a broken download where it stopped."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from opskit.core.errors import StorageError
from opskit.storage.cloud import ChunkReader, PartSchedule, PartWriter, open_reader
from opskit.storage.retry import RetryPolicy


class Recorder:
    """Records what a PartWriter uploads."""

    def __init__(self, fail_on_part: int | None = None) -> None:
        self.parts: dict[int, bytes] = {}
        self.whole: bytes | None = None
        self.fail_on_part = fail_on_part
        self.lock = threading.Lock()

    def upload_part(self, number: int, data: bytes) -> int:
        if number == self.fail_on_part:
            raise StorageError(f"part {number} failed")
        with self.lock:
            self.parts[number] = data
        return number

    def upload_whole(self, data: bytes) -> None:
        self.whole = data


def writer(recorder: Recorder, base: int = 10) -> PartWriter[int]:
    return PartWriter(PartSchedule(base=base, grow_every=2), recorder.upload_part, recorder.upload_whole)


def test_an_object_smaller_than_one_part_is_uploaded_whole() -> None:
    recorder = Recorder()
    parts = writer(recorder)
    parts.write(b"abc")
    parts.write(b"def")
    assert parts.finish() == []
    assert recorder.whole == b"abcdef"
    assert recorder.parts == {}


def test_an_object_of_exactly_one_part_is_uploaded_whole() -> None:
    recorder = Recorder()
    parts = writer(recorder)
    parts.write(b"0123456789")
    assert parts.finish() == []
    assert recorder.whole == b"0123456789"


def test_parts_follow_the_schedule_and_come_back_in_order() -> None:
    recorder = Recorder()
    parts = writer(recorder)  # sizes 10, 10, 20, 20, 40 ...
    data = bytes(range(256)) * 3
    for start in range(0, len(data), 7):
        parts.write(data[start : start + 7])
    results = parts.finish()
    assert results == sorted(recorder.parts)
    assert [len(recorder.parts[n]) for n in results[:4]] == [10, 10, 20, 20]
    assert b"".join(recorder.parts[n] for n in results) == data
    assert recorder.whole is None
    assert parts.bytes_written == len(data)


def test_a_failed_part_surfaces_on_a_later_write_or_at_finish() -> None:
    recorder = Recorder(fail_on_part=2)
    parts = writer(recorder)
    with pytest.raises(StorageError, match="part 2 failed"):
        for _ in range(20):
            parts.write(b"x" * 10)
        parts.finish()
    parts.cancel()


def test_closing_the_stream_neither_commits_nor_aborts() -> None:
    recorder = Recorder()
    parts = writer(recorder)
    parts.write(b"abc")
    parts.close()  # a pipeline stage closing its sink
    assert recorder.whole is None
    parts.finish()
    assert recorder.whole == b"abc"


class FlakyDownload:
    """A download that breaks once after ``break_after`` bytes, then resumes from any offset."""

    def __init__(self, data: bytes, break_after: int, error: Exception) -> None:
        self.data = data
        self.break_after = break_after
        self.error = error
        self.opened_at: list[int] = []

    def open_at(self, offset: int) -> Iterator[bytes]:
        self.opened_at.append(offset)

        def chunks() -> Iterator[bytes]:
            pos = offset
            while pos < len(self.data):
                if len(self.opened_at) == 1 and pos >= self.break_after:
                    raise self.error
                yield self.data[pos : pos + 7]
                pos += 7

        return chunks()


def policy(transient: bool) -> RetryPolicy:
    return RetryPolicy(storage="t", max_attempts=3, is_transient=lambda exc: transient, initial_wait=0.0)


def test_a_read_broken_by_a_transient_error_resumes_at_the_offset_reached() -> None:
    data = bytes(range(200))
    download = FlakyDownload(data, break_after=50, error=ConnectionResetError("reset"))
    reader = ChunkReader(download.open_at, policy(True), lambda exc: StorageError(str(exc)), "k")
    with capture_logs() as logs:
        assert open_reader(reader).read() == data
    assert download.opened_at == [0, 56]
    assert [entry["action"] for entry in logs if entry["log_level"] == "warning"] == ["read"]


def test_a_read_broken_by_a_permanent_error_fails_with_the_translated_error() -> None:
    download = FlakyDownload(bytes(100), break_after=10, error=ValueError("bad"))
    reader = ChunkReader(download.open_at, policy(False), lambda exc: StorageError(f"reading failed: {exc}"), "k")
    with pytest.raises(StorageError, match="reading failed: bad"):
        open_reader(reader).read()


def test_parts_uploaded_in_worker_threads_see_the_callers_log_context() -> None:
    seen: list[dict[str, object]] = []

    def upload_part(number: int, data: bytes) -> int:
        seen.append(structlog.contextvars.get_contextvars())
        return number

    structlog.contextvars.bind_contextvars(target="app", backup_id="20261126T000000Z-ab")
    try:
        parts = PartWriter(PartSchedule(base=4), upload_part, lambda data: None)
        parts.write(b"x" * 20)
        parts.finish()
    finally:
        structlog.contextvars.unbind_contextvars("target", "backup_id")
    assert seen and all(ctx.get("target") == "app" for ctx in seen)
