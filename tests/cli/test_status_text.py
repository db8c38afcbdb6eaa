"""``opskit status`` in words: a storage without backups says so, never "newest None"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_storage_without_backups_reads_no_backups(tmp_path: Path) -> None:
    (tmp_path / "opskit.toml").write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "opskit", "-q", "status"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert "  storage local (file): no backups\n" in result.stdout
    assert "None" not in result.stdout
