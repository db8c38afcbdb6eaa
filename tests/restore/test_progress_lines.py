"""On a terminal, verify draws a progress line with the percentage of the size the manifest gives."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from opskit.restore import verify
from opskit.storage.base import StorageConfig
from tests.ops.test_prune import TARGET, make_context, store_backup
from tests.restore.test_verify import dump, source_dsn

__all__ = ["dump", "source_dsn"]  # module fixtures shared with test_verify


def test_verify_on_a_terminal_shows_how_far_it_is_through_the_backup(
    local_storage: StorageConfig, dump: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = dataclasses.replace(make_context([local_storage], policy=None), interactive=True)
    manifest = store_backup(ctx.storage(local_storage.name), datetime.now(UTC) - timedelta(hours=1), dump)

    report = verify.run(ctx, "latest", target=TARGET)

    assert report.verifications[0].verdict == "pass"
    captured = capsys.readouterr()
    assert f"\rverify {manifest.id} db: " in captured.err and "%), " in captured.err and "ETA" in captured.err
    assert "\r" not in captured.out  # the progress line never reaches the results stream


def test_verify_off_a_terminal_draws_nothing(
    local_storage: StorageConfig, dump: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = make_context([local_storage], policy=None)
    store_backup(ctx.storage(local_storage.name), datetime.now(UTC) - timedelta(hours=1), dump)

    verify.run(ctx, "latest", target=TARGET)

    assert "\r" not in capsys.readouterr().err
