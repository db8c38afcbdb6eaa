"""``opskit metrics --textfile`` into a place it cannot write: one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_textfile_in_a_missing_directory_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "opskit.toml").write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "opskit", "-q", "metrics", "--textfile", str(tmp_path / "missing" / "x.prom")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1 and f"cannot write metrics to {tmp_path / 'missing' / 'x.prom'}" in errors[0]
