"""Verify against real storages with a real pg_dump archive: intact passes, a flipped byte exits 5."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pyrage
import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.backup import backup
from opskit.cli.backup_extra import register_backup_commands
from opskit.config.model import EncryptionConfig
from opskit.core.errors import RestoreFailed
from opskit.core.execute import run as run_command
from opskit.pg import tools
from opskit.restore import verify
from opskit.restore.verify import latest_verification, newest_verified_id
from opskit.secrets.references import SecretRef
from opskit.storage.base import Storage, StorageConfig
from tests.ops.test_prune import ADMIN_DSN, TARGET, make_context, store_backup, throwaway_database


@pytest.fixture(scope="module")
def source_dsn() -> Iterator[str]:
    """The DSN of a throwaway database with one small table."""
    with throwaway_database("verify") as dsn:
        yield dsn


@pytest.fixture(scope="module")
def dump(source_dsn: str) -> bytes:
    """Return a real ``pg_dump -Fc -Z0`` archive of the throwaway database."""
    pg_dump = tools.find_tool("pg_dump", 15)
    result = run_command([pg_dump.path, "-Fc", "-Z0", f"--dbname={source_dsn}"])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


def flip_a_byte(store: Storage, key: str) -> None:
    """Rewrite the object with one byte in its middle inverted (bit rot, a bad disk, a bad copy)."""
    with store.reader(key) as inp:
        data = bytearray(inp.read())
    data[len(data) // 2] ^= 0xFF
    with store.writer(key) as out:
        out.write(bytes(data))


def test_an_intact_backup_passes_every_check_and_the_result_is_recorded(
    storage_config: StorageConfig, dump: bytes
) -> None:
    ctx = make_context([storage_config], policy=None)
    store = ctx.storage(storage_config.name)
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1), dump)

    report = verify.run(ctx, "latest", target=TARGET)

    (verification,) = report.verifications
    assert (verification.backup_id, verification.level, verification.verdict) == (manifest.id, "full", "pass")
    checks = {(c.subject, c.name): c for c in verification.checks}
    assert checks[("db", "plain sha256")].actual == manifest.artifact("db").plain_sha256
    assert checks[("db", "pg_restore --list")].ok
    assert checks[("db", "pg_restore --list")].actual.endswith("entries")
    recorded = latest_verification(store, manifest)
    assert recorded is not None and recorded.passed and recorded.key.startswith(f"{manifest.prefix}/verify-")
    assert newest_verified_id(store, TARGET) == manifest.id


def test_a_real_backup_verifies_and_a_flipped_byte_in_it_exits_5(
    storage_config: StorageConfig, source_dsn: str
) -> None:
    ctx = make_context([storage_config], policy=None, dsn=source_dsn)
    store = ctx.storage(storage_config.name)
    manifest = backup.run(ctx, target=TARGET).manifest

    (intact,) = verify.run(ctx, "latest", target=TARGET).verifications
    assert (intact.backup_id, intact.level, intact.verdict) == (manifest.id, "full", "pass")
    assert any(c.name == "pg_restore --list" and c.ok for c in intact.checks)

    flip_a_byte(store, manifest.artifact("db").key)
    with pytest.raises(verify.VerifyFailed) as caught:
        verify.run(ctx, manifest.id, target=TARGET)
    assert caught.value.exit_code == 5
    assert f"backup {manifest.id} artifact 'db': stored sha256" in caught.value.message


def test_a_flipped_byte_in_an_artifact_fails_verification(storage_config: StorageConfig, dump: bytes) -> None:
    ctx = make_context([storage_config], policy=None)
    store = ctx.storage(storage_config.name)
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1), dump)
    flip_a_byte(store, manifest.artifact("db").key)

    with pytest.raises(verify.VerifyFailed) as caught:
        verify.run(ctx, manifest.id, target=TARGET)

    assert caught.value.exit_code == 5
    assert f"artifact 'db': stored sha256 (expected {manifest.artifact('db').sha256}" in caught.value.message
    recorded = latest_verification(store, manifest)
    assert recorded is not None and recorded.verdict == "fail"
    assert newest_verified_id(store, TARGET) is None


def test_plain_bytes_that_are_not_a_dump_fail_the_pg_restore_check(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage], policy=None)
    store = ctx.storage(local_storage.name)
    store_backup(store, datetime.now(UTC) - timedelta(hours=1), b"this is not a pg_dump archive\n" * 100)

    with pytest.raises(verify.VerifyFailed) as caught:
        verify.run(ctx, "latest", target=TARGET)

    (verification,) = caught.value.report.verifications
    failed = [c.name for c in verification.checks if not c.ok]
    assert failed == ["pg_restore --list"]
    assert "pg_restore --list" in caught.value.message


def test_an_encrypted_backup_is_checked_without_the_key_and_fully_with_it(
    s3_bucket: StorageConfig, dump: bytes
) -> None:
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    without_key = make_context([s3_bucket], policy=None, encryption=EncryptionConfig(recipients=(recipient,)))
    store = without_key.storage(s3_bucket.name)
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1), dump, recipients=(recipient,))
    with_key = make_context(
        [s3_bucket],
        policy=None,
        encryption=EncryptionConfig(recipients=(recipient,), identity=SecretRef(str(identity))),
    )

    stored_only = verify.run(without_key, "latest", target=TARGET).verifications[0]
    full = verify.run(with_key, "latest", target=TARGET).verifications[0]

    assert (stored_only.level, stored_only.verdict) == ("stored", "pass")
    assert {c.name for c in stored_only.checks} == {"stored size", "stored sha256"}
    assert (full.level, full.verdict) == ("full", "pass")
    assert any(c.name == "pg_restore --list" and c.ok for c in full.checks)

    wrong_key = make_context(
        [s3_bucket],
        policy=None,
        encryption=EncryptionConfig(identity=SecretRef(str(pyrage.x25519.Identity.generate()))),
    )
    with pytest.raises(RestoreFailed) as wrong:  # the key is wrong, not the backup: exit 4, no verdict
        verify.run(wrong_key, "latest", target=TARGET)
    assert "the configured identity matches none" in wrong.value.message

    flip_a_byte(store, manifest.artifact("db").key)
    with pytest.raises(verify.VerifyFailed) as caught:
        verify.run(without_key, "latest", target=TARGET)
    assert "artifact 'db': stored sha256" in caught.value.message


def test_verify_all_checks_every_backup_and_names_the_bad_one(local_storage: StorageConfig, dump: bytes) -> None:
    ctx = make_context([local_storage], policy=None)
    store = ctx.storage(local_storage.name)
    now = datetime.now(UTC)
    good, bad = store_backup(store, now - timedelta(hours=1), dump), store_backup(store, now - timedelta(hours=2), dump)
    flip_a_byte(store, bad.artifact("globals").key)

    with pytest.raises(verify.VerifyFailed) as caught:
        verify.run(ctx, all_backups=True, target=TARGET)

    report = caught.value.report
    assert [(v.backup_id, v.verdict) for v in report.verifications] == [(good.id, "pass"), (bad.id, "fail")]
    assert f"backup {bad.id} artifact 'globals'" in caught.value.message
    assert newest_verified_id(store, TARGET) == good.id


# --------------------------------------------------------------------------- the command line


def backup_cli() -> click.Group:
    """The CLI root with a ``backup`` group carrying the commands this module adds."""
    from opskit.cli import LazyContext, OpskitGroup

    @click.group(cls=OpskitGroup)
    @click.option("--config", "config_path")
    @click.pass_context
    def root(ctx: click.Context, config_path: str) -> None:
        ctx.obj = LazyContext(config_path, False)

    @root.group("backup")
    def backup_group() -> None:
        """Backups."""

    register_backup_commands(backup_group)
    return root


def test_the_verify_command_exits_5_naming_the_artifact_and_the_check(tmp_path: Path, dump: bytes) -> None:
    storage_dir = tmp_path / "backups"
    config_path = tmp_path / "opskit.toml"
    config_path.write_text(
        f'[storages.local]\nurl = "file://{storage_dir}"\n\n[targets.{TARGET}]\ndsn = "{ADMIN_DSN}"\n'
    )
    store = make_context([StorageConfig("local", f"file://{storage_dir}")], None).storage("local")
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1), dump)
    runner = CliRunner()

    intact = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "verify", "latest"])
    assert intact.exit_code == 0, intact.output
    assert f"backup {manifest.id} in local: PASS (full" in intact.stdout

    flip_a_byte(store, manifest.artifact("db").key)
    broken = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "verify", manifest.id])

    assert broken.exit_code == 5
    assert f"backup {manifest.id} in local: FAIL" in broken.stdout
    assert "opskit: error:" in broken.stderr and "artifact 'db': stored sha256" in broken.stderr

    usage = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "verify"])
    assert usage.exit_code == 2


def test_pin_and_unpin_commands_write_and_remove_the_marker(tmp_path: Path) -> None:
    storage_dir = tmp_path / "backups"
    config_path = tmp_path / "opskit.toml"
    config_path.write_text(
        f'[storages.local]\nurl = "file://{storage_dir}"\n\n[targets.{TARGET}]\ndsn = "{ADMIN_DSN}"\n'
    )
    store = make_context([StorageConfig("local", f"file://{storage_dir}")], None).storage("local")
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1))
    manifest_bytes = (storage_dir / catalog.manifest_key(TARGET, manifest.id)).read_bytes()
    runner = CliRunner()

    pinned = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "pin", manifest.id[:12]])

    assert pinned.exit_code == 0, pinned.output
    assert f"backup {manifest.id} of '{TARGET}' pinned in local" in pinned.stdout
    assert catalog.is_pinned(store, manifest)
    assert (storage_dir / catalog.manifest_key(TARGET, manifest.id)).read_bytes() == manifest_bytes

    unpinned = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "unpin", manifest.id])
    again = runner.invoke(backup_cli(), ["--config", str(config_path), "backup", "unpin", manifest.id])

    assert "unpinned in local" in unpinned.stdout and not catalog.is_pinned(store, manifest)
    assert "was not pinned" in again.stdout
