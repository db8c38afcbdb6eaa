"""``opskit wal push`` / ``opskit wal fetch`` through the real CLI, on a file:// archive: PostgreSQL's rules for both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

SEGMENT = "000000010000000000000003"


def opskit(config: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=cwd,
        timeout=120,
    )


def write_config(tmp_path: Path, encryption: str = "") -> Path:
    config = tmp_path / "opskit.toml"
    config.write_text(
        '[targets.app]\ndsn = "host=127.0.0.1 dbname=postgres"\nstorages = ["local"]\n\n'
        f'[storages.local]\nurl = "file://{tmp_path / "archive"}"\n\n'
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n\n{encryption}',
        encoding="utf-8",
    )
    return config


def wal_file(tmp_path: Path, content: bytes, name: str = SEGMENT) -> Path:
    pg_wal = tmp_path / "data" / "pg_wal"
    pg_wal.mkdir(parents=True, exist_ok=True)
    path = pg_wal / name
    path.write_bytes(content)
    return path


@pytest.fixture
def segment_bytes() -> bytes:
    return os.urandom(64 * 1024) + b"\0" * (16 * 1024 * 1024 - 64 * 1024)


def test_pushing_the_same_segment_twice_succeeds_and_stores_it_once(tmp_path: Path, segment_bytes: bytes) -> None:
    config = write_config(tmp_path)
    path = wal_file(tmp_path, segment_bytes)

    first = opskit(config, "wal", "push", str(path))
    again = opskit(config, "wal", "push", str(path))

    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    stored = sorted(p.name for p in (tmp_path / "archive" / "app" / "wal").iterdir())
    assert stored == [f"{SEGMENT}.sha256", f"{SEGMENT}.zst"]


def test_pushing_different_bytes_under_an_archived_name_fails_loudly_and_overwrites_nothing(
    tmp_path: Path, segment_bytes: bytes
) -> None:
    config = write_config(tmp_path)
    path = wal_file(tmp_path, segment_bytes)
    assert opskit(config, "wal", "push", str(path)).returncode == 0
    stored = (tmp_path / "archive" / "app" / "wal" / f"{SEGMENT}.zst").read_bytes()
    path.write_bytes(b"\1" + segment_bytes[1:])

    result = opskit(config, "wal", "push", str(path))

    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1
    assert f"WAL file {SEGMENT} is already archived for target 'app' with different content" in errors[0]
    assert (tmp_path / "archive" / "app" / "wal" / f"{SEGMENT}.zst").read_bytes() == stored


def test_a_push_killed_after_its_hash_record_is_completed_by_the_retry(tmp_path: Path, segment_bytes: bytes) -> None:
    config = write_config(tmp_path)
    path = wal_file(tmp_path, segment_bytes)
    assert opskit(config, "wal", "push", str(path)).returncode == 0
    # What a push killed between its two creates leaves: the record, no segment object.
    (tmp_path / "archive" / "app" / "wal" / f"{SEGMENT}.zst").unlink()

    retry = opskit(config, "wal", "push", str(path))
    fetched = opskit(config, "wal", "fetch", SEGMENT, str(tmp_path / "RECOVERYXLOG"))

    assert retry.returncode == 0, retry.stderr
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == segment_bytes


def test_fetch_of_a_file_the_archive_lacks_exits_1_without_a_word(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    result = opskit(config, "wal", "fetch", "00000002.history", str(tmp_path / "RECOVERYHISTORY"))

    assert result.returncode == 1
    assert result.stdout == ""
    assert "error" not in result.stderr
    assert not (tmp_path / "RECOVERYHISTORY").exists()


def test_fetch_of_a_corrupt_object_exits_above_125_with_one_error_line_so_recovery_aborts(
    tmp_path: Path, segment_bytes: bytes
) -> None:
    config = write_config(tmp_path)
    assert opskit(config, "wal", "push", str(wal_file(tmp_path, segment_bytes))).returncode == 0
    stored = tmp_path / "archive" / "app" / "wal" / f"{SEGMENT}.zst"
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))

    result = opskit(config, "wal", "fetch", SEGMENT, str(tmp_path / "RECOVERYXLOG"))

    assert result.returncode == 128 + 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1 and f"archived WAL file {SEGMENT}" in errors[0], result.stderr
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_fetch_with_a_broken_config_exits_above_125_not_as_a_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text("[targets.app\n", encoding="utf-8")

    result = opskit(config, "wal", "fetch", SEGMENT, str(tmp_path / "RECOVERYXLOG"))

    assert result.returncode == 128 + 2, result.stderr
    assert result.stderr.startswith("opskit: error:")


def test_fetch_writes_to_a_path_relative_to_the_data_directory_as_postgres_passes_it(
    tmp_path: Path, segment_bytes: bytes
) -> None:
    config = write_config(tmp_path)
    path = wal_file(tmp_path, segment_bytes)
    assert opskit(config, "wal", "push", "pg_wal/" + SEGMENT, cwd=tmp_path / "data").returncode == 0
    path.unlink()

    result = opskit(config, "wal", "fetch", SEGMENT, "pg_wal/RECOVERYXLOG", cwd=tmp_path / "data")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "pg_wal" / "RECOVERYXLOG").read_bytes() == segment_bytes
    assert [p.name for p in (tmp_path / "data" / "pg_wal").iterdir()] == ["RECOVERYXLOG"]


def test_encrypted_wal_is_stored_as_age_and_fetched_back_only_with_the_identity(
    tmp_path: Path, segment_bytes: bytes
) -> None:
    identity = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(str(identity) + "\n")
    key_file.chmod(0o600)
    recipients = f'[encryption]\nrecipients = ["{identity.to_public()}"]\n'
    config = write_config(tmp_path, recipients + f'identity = "file:{key_file}"\n')
    path = wal_file(tmp_path, segment_bytes)

    pushed = opskit(config, "wal", "push", str(path))
    fetched = opskit(config, "wal", "fetch", SEGMENT, str(tmp_path / "RECOVERYXLOG"))
    without_identity = opskit(write_config(tmp_path, recipients), "wal", "fetch", SEGMENT, str(tmp_path / "X"))

    assert pushed.returncode == 0, pushed.stderr
    stored = tmp_path / "archive" / "app" / "wal" / f"{SEGMENT}.zst.age"
    assert stored.read_bytes().startswith(b"age-encryption.org/v1")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == segment_bytes
    assert without_identity.returncode == 128 + 4  # above 125: PostgreSQL aborts recovery
    assert f"archived WAL file {SEGMENT} is encrypted; no identity is configured" in without_identity.stderr


def test_a_file_that_is_not_wal_is_refused_with_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    path = wal_file(tmp_path, b"x", name="postgresql.conf")

    result = opskit(config, "wal", "push", str(path))

    assert result.returncode == 2
    assert "is not a WAL file" in result.stderr
