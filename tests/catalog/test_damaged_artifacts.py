"""A listed backup whose stored object is damaged or gone: every reader exits 5 naming the object.

An encrypted dump with a flipped byte or cut short fails age's payload check (pyrage raises a
bare OSError); a dump object deleted under its manifest is an incomplete backup. Both are
"the data is wrong" (exit 5) for ``restore`` (--jobs 1 and 2) and ``backup verify``, with a
hint to restore another backup; no restored database is left behind.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyrage
import pytest

from opskit.catalog import artifacts
from opskit.core.errors import VerificationFailed
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.faults.helpers import Setup, database, databases_like, local_root, one_line_error, write_setup
from tests.ops.test_prune import store_backup

__all__ = ["database"]  # the fixture: a fresh pgbench database per test


def flip_a_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, Callable[[Path], None]] = {"flipped byte": flip_a_middle_byte, "truncated": cut_short}


def backed_up(tmp_path: Path, database: str, storage: StorageConfig, *, encrypted: bool) -> tuple[Setup, str, str]:
    """Take one backup (age-encrypted, with the identity configured, if ``encrypted``); return setup, id, dump key."""
    extra = ""
    if encrypted:
        identity = pyrage.x25519.Identity.generate()
        key_file = tmp_path / "age.key"
        key_file.write_text(f"{identity}\n")
        extra = f'[encryption]\nrecipients = ["{identity.to_public()}"]\nidentity = "file:{key_file}"\n'
    setup = write_setup(tmp_path, database, storage, extra=extra)
    result = setup.run("backup", "now")
    assert result.returncode == 0, result.stderr
    [backup] = setup.backups()
    key = next(a["key"] for a in backup["artifacts"] if a["name"] == "db")  # type: ignore[attr-defined]
    return setup, str(backup["id"]), str(key)


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_encrypted_dump_fails_restore_and_verify_with_exit_5_naming_the_object(
    tmp_path: Path, database: str, local_storage: StorageConfig, damage: str
) -> None:
    setup, backup_id, key = backed_up(tmp_path, database, local_storage, encrypted=True)
    assert key.endswith(".age")
    DAMAGES[damage](local_root(local_storage) / key)

    for jobs in ("1", "2"):
        restored = setup.run("restore", backup_id, "--jobs", jobs)

        assert restored.returncode == 5, restored.stderr
        line = one_line_error(restored.stderr)
        assert f"artifact '{key}' of backup {backup_id}" in line and "restore another backup" in line
        assert "unexpected error" not in restored.stderr
        assert databases_like(database + "_restore_") == []

    verified = setup.run("backup", "verify", backup_id)

    assert verified.returncode == 5, verified.stderr
    assert f"backup {backup_id} artifact 'db'" in one_line_error(verified.stderr)


def test_a_listed_backup_whose_dump_object_is_gone_fails_restore_with_exit_5_and_a_hint(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    setup, backup_id, key = backed_up(tmp_path, database, local_storage, encrypted=False)
    (local_root(local_storage) / key).unlink()

    for jobs in ("1", "2"):
        restored = setup.run("restore", "latest", "--jobs", jobs, "--json")

        assert restored.returncode == 5, restored.stderr
        error = json.loads(restored.stdout)["error"]
        assert error["exit_code"] == 5 and error["type"] == "VerificationFailed"
        assert f"artifact '{key}' of backup {backup_id} is missing" in error["message"]
        assert "restore another backup" in error["hint"] and "opskit backup verify" in error["hint"]
        assert databases_like(database + "_restore_") == []


def test_a_full_disk_under_the_sink_of_an_encrypted_read_stays_a_disk_error_not_a_corrupt_object(
    local_storage: StorageConfig,
) -> None:
    identity = pyrage.x25519.Identity.generate()
    store = open_storage(local_storage)
    manifest = store_backup(store, datetime.now(UTC), b"x" * 3_000_000, recipients=(str(identity.to_public()),))

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        artifacts.read_artifact(store, manifest.artifact("db"), FullDisk(), identities=[identity])

    assert caught.value.errno == errno.ENOSPC and not isinstance(caught.value, VerificationFailed)
