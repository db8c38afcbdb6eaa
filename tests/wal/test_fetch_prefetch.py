"""``opskit wal fetch`` reads ahead: the next segments wait in ``pg_wal/opskit-prefetch`` and leave at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opskit.wal import archive
from tests.wal.test_archive import opskit, wal_file, write_config

SEGMENTS = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]
SEGMENT_SIZE = 16 * 1024 * 1024


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Push three consecutive segments with distinct bytes; return the config and the bytes by name."""
    config = write_config(tmp_path)
    contents = {}
    for name in SEGMENTS:
        data = os.urandom(4096) + b"\0" * (SEGMENT_SIZE - 4096)
        path = wal_file(tmp_path, data, name)
        assert opskit(config, "wal", "push", str(path)).returncode == 0
        path.unlink()
        contents[name] = data
    return config, contents


def test_a_fetch_reads_the_next_segments_ahead_and_a_later_fetch_takes_them_verified(
    tmp_path: Path, archived: tuple[Path, dict[str, bytes]]
) -> None:
    config, contents = archived
    data_dir = tmp_path / "data"
    prefetch = data_dir / "pg_wal" / "opskit-prefetch"

    first = opskit(config, "wal", "fetch", SEGMENTS[0], "pg_wal/RECOVERYXLOG", cwd=data_dir)

    assert first.returncode == 0, first.stderr
    assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[SEGMENTS[0]]
    assert sorted(p.name for p in prefetch.iterdir()) == SEGMENTS[1:]
    # The archive's copies gone, the next fetches can only be served by the read-ahead.
    for name in SEGMENTS[1:]:
        (tmp_path / "archive" / "app" / "wal" / f"{name}.zst").unlink()
    for name in SEGMENTS[1:]:
        result = opskit(config, "wal", "fetch", name, "pg_wal/RECOVERYXLOG", cwd=data_dir)
        assert result.returncode == 0, result.stderr
        assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[name]
    assert list(prefetch.iterdir()) == []


def test_the_first_miss_ends_recovery_and_removes_the_read_ahead(
    tmp_path: Path, archived: tuple[Path, dict[str, bytes]]
) -> None:
    config, _contents = archived
    data_dir = tmp_path / "data"
    assert opskit(config, "wal", "fetch", SEGMENTS[0], "pg_wal/RECOVERYXLOG", cwd=data_dir).returncode == 0

    # Recovery probes for a newer timeline's history file when it promotes: absent.
    result = opskit(config, "wal", "fetch", "00000002.history", "pg_wal/RECOVERYHISTORY", cwd=data_dir)

    assert result.returncode == 1
    assert result.stdout == ""
    assert sorted(p.name for p in (data_dir / "pg_wal").iterdir()) == ["RECOVERYXLOG"]


def test_a_read_ahead_stops_at_the_first_segment_not_archived(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    data = os.urandom(4096) + b"\0" * (SEGMENT_SIZE - 4096)
    for name in (SEGMENTS[0], SEGMENTS[2]):  # a gap at SEGMENTS[1]
        path = wal_file(tmp_path, data, name)
        assert opskit(config, "wal", "push", str(path)).returncode == 0
        path.unlink()

    result = opskit(config, "wal", "fetch", SEGMENTS[0], "pg_wal/RECOVERYXLOG", cwd=tmp_path / "data")

    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "data" / "pg_wal" / "opskit-prefetch").exists()


def test_the_read_ahead_restore_command_renames_in_the_shell_and_falls_back_to_the_fetch(
    tmp_path: Path, archived: tuple[Path, dict[str, bytes]]
) -> None:
    config, contents = archived
    data_dir = tmp_path / "data"
    fetch = " ".join([sys.executable, "-m", "opskit", "--config", str(config), "wal", "fetch", "%f", "%p"])
    command = archive.with_read_ahead(fetch)

    def restore(name: str) -> subprocess.CompletedProcess[str]:
        # As PostgreSQL runs it: %f and %p replaced, through /bin/sh, in the data directory.
        line = command.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
        return subprocess.run(["/bin/sh", "-c", line], cwd=data_dir, capture_output=True, text=True, timeout=120)

    assert restore(SEGMENTS[0]).returncode == 0
    (tmp_path / "archive" / "app" / "wal" / f"{SEGMENTS[1]}.zst").unlink()  # only the read-ahead has it now
    taken = restore(SEGMENTS[1])
    missing = restore("000000010000000000000009")

    assert taken.returncode == 0, taken.stderr
    assert (data_dir / "pg_wal" / "RECOVERYXLOG").read_bytes() == contents[SEGMENTS[1]]
    assert missing.returncode == 1
    assert not (data_dir / "pg_wal" / "opskit-prefetch").exists()
