"""``opskit metrics --textfile`` into a place it cannot write: one line, exit 2."""

from __future__ import annotations

from pathlib import Path

from tests.faults.helpers import one_line_error, run_opskit


def test_a_textfile_in_a_missing_directory_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    result = run_opskit(config, "-q", "metrics", "--textfile", str(tmp_path / "missing" / "x.prom"), timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"cannot write metrics to {tmp_path / 'missing' / 'x.prom'}" in one_line_error(result.stderr)
