"""``opskit wal fetch`` runs once per WAL segment during recovery: its start must not load the database driver."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_config_and_archive_modules_load_without_psycopg() -> None:
    code = "import sys, opskit.cli, opskit.config.load, opskit.wal.archive; print('psycopg' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
