"""Local-disk storage details the contract suite does not cover: unfinished writes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opskit.storage.local import TEMP_PREFIX, LocalStorage


def test_an_unfinished_write_is_invisible_and_swept_once_older_than_the_grace_period(tmp_path: Path) -> None:
    storage = LocalStorage("disk", f"file://{tmp_path}", tmp_path)
    leftover = tmp_path / "app" / "20261126T174200Z-abcd" / f"{TEMP_PREFIX}db.dump.zst.1a2b3c4d"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a dump")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(leftover, (two_days_ago, two_days_ago))

    assert list(storage.list("app/")) == []
    assert storage.abort_incomplete_uploads("app/", datetime.now(UTC) - timedelta(days=3), dry_run=False) == []
    swept = storage.abort_incomplete_uploads("app/", datetime.now(UTC) - timedelta(days=1), dry_run=True)
    assert swept == ["app/20261126T174200Z-abcd/db.dump.zst"] and leftover.exists()
    storage.abort_incomplete_uploads("app/", datetime.now(UTC) - timedelta(days=1), dry_run=False)
    assert not leftover.exists()


def test_an_exception_inside_the_writer_leaves_no_file(tmp_path: Path) -> None:
    storage = LocalStorage("disk", f"file://{tmp_path}", tmp_path)

    with pytest.raises(RuntimeError), storage.writer("a/b") as out:
        out.write(b"partial")
        raise RuntimeError("pg_dump died")

    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
