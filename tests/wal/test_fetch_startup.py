"""``opskit wal fetch`` runs once per WAL segment during recovery: its start must not load the database driver or package metadata."""

from __future__ import annotations

import subprocess
import sys


def test_the_cli_config_and_archive_modules_load_without_psycopg() -> None:
    code = "import sys, opskit.cli, opskit.config.load, opskit.wal.archive; print('psycopg' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_cli_loads_without_importlib_metadata_and_the_literal_version_is_the_installed_one() -> None:
    from importlib.metadata import version

    import opskit

    code = "import sys, opskit.cli, opskit.wal.archive; print('importlib.metadata' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert version("opskit") == opskit.__version__
