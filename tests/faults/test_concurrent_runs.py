"""Fault: two ``opskit backup now`` of one target at once.

The first run holds the target's advisory lock for its whole length; the second is
refused in preflight with exit 7 and touches nothing, and the first commits normally.
"""

from __future__ import annotations

from pathlib import Path

from opskit.storage.base import StorageConfig
from tests.faults.helpers import one_line_error, real_pg_dump_pid, slow_tools_dir, wait_for, write_setup


def test_a_second_backup_of_the_same_target_exits_7_and_leaves_the_first_untouched(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> None:
    # ~6 s of dump: room for the second CLI to start and reach its lock check on a loaded machine.
    slow = slow_tools_dir(tmp_path, bytes_per_second=3 * 1024 * 1024 // 2)
    first_setup = write_setup(tmp_path / "first", database, local_storage, target_extra=f'pg_bin_dir = "{slow}"')
    second_setup = write_setup(tmp_path / "second", database, local_storage)
    first = first_setup.start("backup", "now")
    wait_for(lambda: real_pg_dump_pid(first.pid), what="the first run's pg_dump")  # the lock is held by now

    second = second_setup.run("backup", "now")
    first_out, first_err = first.communicate(timeout=60)

    assert second.returncode == 7, second.stderr
    line = one_line_error(second.stderr)
    assert "another backup of target 'app' is running" in line and "this run changed nothing" in line
    assert first.returncode == 0, first_err
    [backup] = first_setup.backups()
    assert str(backup["id"]) in first_out
