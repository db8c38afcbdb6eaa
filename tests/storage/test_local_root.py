"""A local storage whose root is not a directory is an error (exit 3), never an empty storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opskit.core.errors import StorageError
from opskit.storage.local import LocalStorage


def run_opskit(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "opskit.toml").write_text(
        f'[storages.local]\nurl = "{url}"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    return subprocess.run(
        [sys.executable, "-m", "opskit", "-q", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )


@pytest.mark.parametrize("below", ["", "/sub"])
def test_listing_a_root_that_is_a_file_or_lies_under_one_is_an_unreachable_storage(tmp_path: Path, below: str) -> None:
    (tmp_path / "afile").write_text("not a directory")
    root = Path(f"{tmp_path / 'afile'}{below}")
    storage = LocalStorage("local", f"file://{root}", root)
    with pytest.raises(StorageError) as caught:
        list(storage.list("app/"))
    assert caught.value.exit_code == 3
    assert caught.value.message == f"storage 'local': its root {root} cannot be listed: " + (
        "not a directory" if not below else "Not a directory"
    )


def test_a_root_that_does_not_exist_yet_is_an_empty_storage(tmp_path: Path) -> None:
    storage = LocalStorage("local", f"file://{tmp_path}/later", tmp_path / "later")
    assert list(storage.list("app/")) == []


def test_backup_list_on_a_root_under_a_file_exits_3_with_one_line_not_no_backups(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    result = run_opskit(tmp_path, f"file://{tmp_path}/afile/sub", "backup", "list")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no backups" not in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")] == [
        f"opskit: error: storage 'local': its root {tmp_path}/afile/sub cannot be listed: Not a directory; "
        "point storages.local.url at a directory opskit may read and write"
    ]


def test_metrics_report_a_root_under_a_file_as_a_storage_that_is_down(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    result = run_opskit(tmp_path, f"file://{tmp_path}/afile/sub", "metrics")
    assert 'opskit_storage_up{storage="local"} 0.0' in result.stdout
