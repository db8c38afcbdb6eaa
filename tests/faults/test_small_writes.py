"""Faults: a disk that fills up exactly at a small object (a manifest, globals, a pin, a report).

A small object fits in the writer's buffer, so the disk refuses it only when the buffer is
flushed at the end; the writer's error path then closes the file, which flushes again and
fails again. That second failure must not skip the temp file's removal and the error mapping:
the write fails with a StorageError (exit 4) saying the disk is full, and nothing is left.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.core.errors import StorageError
from opskit.storage.local import LocalStorage


def fill(volume: Path) -> None:
    """Fill ``volume`` to its last byte with one file."""
    with open(volume / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_manifest_that_meets_a_full_disk_fails_with_exit_4_and_leaves_no_temp_file(
    tiny_tmpfs: Callable[[str], Path],
) -> None:
    volume = tiny_tmpfs("1m")
    storage = LocalStorage("local", f"file://{volume}", volume)
    (volume / "app" / "20260101T000000Z-abcd").mkdir(parents=True)
    fill(volume)

    with pytest.raises(StorageError) as raised, storage.writer("app/20260101T000000Z-abcd/manifest.json") as handle:
        handle.write(b'{"format": 1}' * 300)  # ~4 KB: stays in the buffer until the end

    assert raised.value.exit_code == 4
    assert "no space left on device" in raised.value.one_line()
    assert "nothing was committed" in raised.value.one_line()
    assert sorted(p.name for p in (volume / "app" / "20260101T000000Z-abcd").iterdir()) == []
