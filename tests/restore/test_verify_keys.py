"""Verify with an identity that does not fit: exit 4 as restore, and no verdict that would unprotect the backup."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pyrage
import pytest

from opskit import catalog
from opskit.config.model import EncryptionConfig
from opskit.config.retention import RetentionPolicy
from opskit.context import AppContext
from opskit.core.errors import RestoreFailed
from opskit.core.execute import run as run_command
from opskit.ops import prune
from opskit.pg import tools
from opskit.restore import verify
from opskit.secrets.references import SecretRef
from opskit.storage.base import StorageConfig
from tests.ops.test_prune import TARGET, make_context, store_backup, throwaway_database

RIGHT = pyrage.x25519.Identity.generate()
WRONG = pyrage.x25519.Identity.generate()
RECIPIENT = str(RIGHT.to_public())


@pytest.fixture(scope="module")
def dump() -> Iterator[bytes]:
    """Return a real ``pg_dump -Fc -Z0`` archive of a throwaway database."""
    with throwaway_database("verifykeys") as dsn:
        result = run_command([tools.find_tool("pg_dump", 15).path, "-Fc", "-Z0", f"--dbname={dsn}"])
        assert result.returncode == 0, result.stderr
        yield result.stdout


def context(storage: StorageConfig, identity: object) -> AppContext:
    """A context with keep_last = 1 whose age identity is ``identity``."""
    encryption = EncryptionConfig(recipients=(RECIPIENT,), identity=SecretRef(str(identity)))
    return make_context([storage], RetentionPolicy(keep_last=1), encryption=encryption)


def decisions(ctx: AppContext) -> dict[str, tuple[str, list[str]]]:
    """Return what a prune --dry-run decides per backup id: (action, reasons)."""
    report = prune.run(ctx, target=TARGET, dry_run=True)
    plan = report.to_dict()["results"][0]["plan"]["decisions"]
    return {d["id"]: (d["action"], d["reasons"]) for d in plan}


def test_verify_with_an_identity_that_fits_no_recipient_exits_4_and_records_no_verdict(
    local_storage: StorageConfig, dump: bytes
) -> None:
    right, wrong = context(local_storage, RIGHT), context(local_storage, WRONG)
    store = right.storage(local_storage.name)
    now = datetime.now(UTC)
    older = store_backup(store, now - timedelta(hours=2), dump, recipients=(RECIPIENT,))
    (passed,) = verify.run(right, older.id, target=TARGET).verifications
    assert (passed.level, passed.verdict) == ("full", "pass")
    store_backup(store, now - timedelta(hours=1), dump, recipients=(RECIPIENT,))
    assert decisions(right)[older.id][0] == "keep"

    with pytest.raises(RestoreFailed) as caught:
        verify.run(wrong, older.id, target=TARGET)

    assert caught.value.exit_code == 4
    assert f"backup {older.id} is encrypted to recipients" in caught.value.message
    assert "matches none" in caught.value.message
    recorded = catalog.latest_verification(store, older)
    assert recorded is not None and recorded.passed  # the pass still stands
    assert catalog.newest_verified_id(store, TARGET) == older.id
    action, reasons = decisions(right)[older.id]
    assert action == "keep" and any("newest verified" in reason for reason in reasons)


def test_verify_all_with_an_identity_that_fits_no_recipient_checks_the_rest_and_exits_4(
    local_storage: StorageConfig, dump: bytes
) -> None:
    wrong = context(local_storage, WRONG)
    store = wrong.storage(local_storage.name)
    now = datetime.now(UTC)
    plain = store_backup(store, now - timedelta(hours=1), dump)
    encrypted = store_backup(store, now - timedelta(hours=2), dump, recipients=(RECIPIENT,))

    with pytest.raises(RestoreFailed) as caught:
        verify.run(wrong, all_backups=True, target=TARGET)

    assert caught.value.exit_code == 4
    assert "1 backup(s) not verified, 1 verified and intact" in caught.value.message
    assert f"backup {encrypted.id} is encrypted to recipients" in caught.value.message
    verified = catalog.latest_verification(store, plain)
    assert verified is not None and verified.passed
    assert catalog.latest_verification(store, encrypted) is None
