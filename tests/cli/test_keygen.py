"""``opskit keygen --out``: a path it cannot write is one error line and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.faults.helpers import cli_env


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "opskit", "keygen", *args], capture_output=True, text=True, env=cli_env(), timeout=60
    )


def test_keygen_into_a_missing_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "dir" / "age.key"

    result = keygen("--out", str(out))

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"opskit: error: cannot write the identity to {out}: the directory {out.parent} does not exist; "
        "create it first (keep it private) or give another --out"
    ]
    assert result.stdout == "" and not out.parent.exists()


def test_keygen_never_overwrites_an_identity(tmp_path: Path) -> None:
    out = tmp_path / "age.key"
    first = keygen("--out", str(out))
    assert first.returncode == 0, first.stderr
    written = out.read_text()

    again = keygen("--out", str(out))

    assert again.returncode == 2
    assert again.stderr.splitlines() == [
        f"opskit: error: {out} exists; refusing to overwrite an identity; give another --out"
    ]
    assert out.read_text() == written and (out.stat().st_mode & 0o777) == 0o600
