"""Temporary PGPASSFILEs live in <state_dir>/pgpass (0700) and a dead run's file is swept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from opskit.pg import passfiles


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_password_file_is_0600_inside_a_0700_directory_and_removed_after_use(tmp_path: Path) -> None:
    with passfiles.password_file("*:*:*:*:pw\n", tmp_path) as path:
        assert path.parent == tmp_path / "pgpass"
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text() == "*:*:*:*:pw\n"
    assert list((tmp_path / "pgpass").iterdir()) == []


def test_the_sweep_removes_a_dead_runs_file_and_keeps_a_live_ones(tmp_path: Path) -> None:
    folder = passfiles.passfile_dir(tmp_path)
    dead = folder / f"{passfiles.PREFIX}{_dead_pid()}-abcd"
    live = folder / f"{passfiles.PREFIX}{os.getppid()}-abcd"  # the parent process is alive
    for path in (dead, live):
        path.write_text("secret")

    assert passfiles.sweep(folder) == [dead]
    assert live.exists()


def test_a_directory_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "pgpass").mkdir(mode=0o777)
    os.chmod(tmp_path / "pgpass", 0o777)

    passfiles.passfile_dir(tmp_path)

    assert stat.S_IMODE((tmp_path / "pgpass").stat().st_mode) == 0o700
