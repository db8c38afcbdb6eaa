"""Faults: a corrupted object in the storage (one flipped byte, a truncated object).

``backup verify`` exits 5 naming the artifact and the check that failed; ``drill
restore`` exits 5 naming the failed check before restoring anything; ``restore`` exits 5
and drops the database it created. The corrupt backup is reported, never "repaired".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.storage.base import StorageConfig
from tests.faults.helpers import PG_HOST, Setup, databases_like, local_root, one_line_error, write_setup

STAGING = f"""
[targets.staging]
dsn = "host={PG_HOST} user=postgres dbname=postgres"
"""


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped byte": (flip_a_byte, "stored sha256"),
    "truncated": (truncate, "stored size"),
}


def corrupt_backup(tmp_path: Path, database: str, storage: StorageConfig, how: str) -> tuple[Setup, str, str]:
    """Take a backup, corrupt its db artifact in place; return the setup, the backup id and the artifact's key."""
    setup = write_setup(tmp_path, database, storage, target_extra='staging = "staging"', extra=STAGING)
    result = setup.run("backup", "now", "--target", "app")
    assert result.returncode == 0, result.stderr
    [backup] = setup.backups()
    key = next(a["key"] for a in backup["artifacts"] if a["name"] == "db")  # type: ignore[attr-defined]
    CORRUPTIONS[how][0](local_root(storage) / key)
    return setup, str(backup["id"]), key


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_verify_fails_with_exit_5_naming_the_corrupt_artifact(
    tmp_path: Path, database: str, local_storage: StorageConfig, how: str
) -> None:
    setup, backup_id, _ = corrupt_backup(tmp_path, database, local_storage, how)

    result = setup.run("backup", "verify", "latest", "--target", "app")

    assert result.returncode == 5, result.stderr
    line = one_line_error(result.stderr)
    assert f"backup {backup_id} artifact 'db': {CORRUPTIONS[how][1]}" in line


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_drill_fails_with_exit_5_naming_the_failed_check_and_restores_nothing(
    tmp_path: Path, database: str, local_storage: StorageConfig, how: str
) -> None:
    setup, _, _ = corrupt_backup(tmp_path, database, local_storage, how)

    staging_db = f"{database}_drill"

    result = setup.run("drill", "restore", "--target", "app", "--database", staging_db)

    assert result.returncode == 5, result.stderr
    line = one_line_error(result.stderr)
    assert "of target 'app' failed:" in line and "stored sha256" in line and "drill report" in line
    assert databases_like(staging_db) == []


def test_a_parallel_restore_of_a_corrupt_backup_fails_with_exit_5_and_drops_the_new_database(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup, _, key = corrupt_backup(tmp_path, database, local_storage, "flipped byte")

    result = setup.run("restore", "latest", "--target", "app", "--jobs", "2")

    assert result.returncode == 5, result.stderr
    assert key in one_line_error(result.stderr)
    assert databases_like(database + "_restore_") == []
    assert list(setup.state_dir.iterdir()) == []


def test_a_streamed_restore_of_a_corrupt_backup_fails_and_drops_the_new_database(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup, _, _ = corrupt_backup(tmp_path, database, local_storage, "flipped byte")

    result = setup.run("restore", "latest", "--target", "app", "--jobs", "1")

    # zstd's frame checksum, or the stored sha256 checked when pg_restore gives up, names the object.
    assert result.returncode == 5, result.stderr
    assert "mismatch" in result.stderr or "does not decompress" in result.stderr
    one_line_error(result.stderr)
    assert databases_like(database + "_restore_") == []
