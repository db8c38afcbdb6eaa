"""Faults: a full disk, under the backup storage and under the restore spool (small tmpfs mounts).

A full backup volume fails the backup with exit 4 and "no space left", leaving neither a
manifest nor a temp file. A full spool volume during ``restore --jobs 2`` of an archive
that needs the spool (one with large objects) fails with exit 4, removes the spool file, and
drops the database the restore created. An archive of tables and sequences needs no spool:
``--jobs 2`` loads it through a volume far smaller than the dump.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from opskit.storage.base import StorageConfig
from tests.faults.helpers import add_random_bytes, databases_like, one_line_error, write_setup


def test_a_full_backup_volume_fails_cleanly_with_no_manifest_and_no_temp_file(
    tmp_path: Path, database: str, tiny_tmpfs: Callable[[str], Path]
) -> None:
    volume = tiny_tmpfs("2m")
    add_random_bytes(database, 4)  # ~4 MiB stored: twice what the volume holds
    storage = StorageConfig(name="local", url=f"file://{volume / 'backups'}")
    setup = write_setup(tmp_path, database, storage)

    result = setup.run("backup", "now")

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "no space left on device" in line and "nothing was committed" in line
    assert setup.backups() == []
    # Nothing but the run's record (catalog.runs: the failure, for metrics), if the freed space took it.
    left = [p for p in volume.rglob("*") if p.is_file()]
    assert all(p.parent.name == "runs" and "-backup-failure-" in p.name for p in left), left


def test_a_full_spool_volume_during_a_parallel_restore_removes_the_spool_and_the_new_database(
    tmp_path: Path, database: str, local_storage: StorageConfig, tiny_tmpfs: Callable[[str], Path]
) -> None:
    add_random_bytes(database, 3)  # the spool holds the plain dump: ~6 MiB of hex, the volume 1 MiB
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}", autocommit=True) as conn:
        conn.execute("SELECT lo_from_bytea(0, 'a large object: only pg_restore loads those')")
    setup = write_setup(tmp_path, database, local_storage)
    backed_up = setup.run("backup", "now")
    assert backed_up.returncode == 0, backed_up.stderr
    spool = tiny_tmpfs("1m")
    setup = write_setup(tmp_path, database, local_storage, state_dir=spool)

    result = setup.run("restore", "latest", "--jobs", "2")

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "spool disk is full" in line and "spool file was removed" in line and "database dropped" in line
    assert list(spool.iterdir()) == []
    assert databases_like(database + "_restore_") == []


def test_a_parallel_restore_of_tables_needs_no_spool_and_passes_through_a_tiny_volume(
    tmp_path: Path, database: str, local_storage: StorageConfig, tiny_tmpfs: Callable[[str], Path]
) -> None:
    add_random_bytes(database, 3)  # ~6 MiB of plain dump against a 1 MiB state volume
    setup = write_setup(tmp_path, database, local_storage)
    assert setup.run("backup", "now").returncode == 0
    state = tiny_tmpfs("1m")
    setup = write_setup(tmp_path, database, local_storage, state_dir=state)

    result = setup.run("restore", "latest", "--jobs", "2")

    assert result.returncode == 0, result.stderr
    assert list(state.iterdir()) == []
    assert len(databases_like(database + "_restore_")) == 1


def _fill(volume: Path) -> None:
    """Write one file until the volume has no byte left."""
    with open(volume / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    # What the buffered writer could not flush is gone; the volume is full.


def test_a_volume_full_before_the_backup_starts_exits_4_with_the_free_space_hint(
    tmp_path: Path, database: str, tiny_tmpfs: Callable[[str], Path]
) -> None:
    volume = tiny_tmpfs("1m")
    storage = StorageConfig(name="local", url=f"file://{volume / 'backups'}")
    (volume / "backups").mkdir()
    setup = write_setup(tmp_path, database, storage)
    _fill(volume)

    result = setup.run("backup", "now")

    assert result.returncode == 4, result.stderr  # a full disk, not a directory to fix (3)
    line = one_line_error(result.stderr)
    assert "no space left on device" in line and "free space on the backup volume" in line


def test_prune_on_a_full_volume_says_it_needs_room_for_its_lock_and_claims_no_other_pruning(
    tmp_path: Path, database: str, tiny_tmpfs: Callable[[str], Path]
) -> None:
    volume = tiny_tmpfs("2m")
    storage = StorageConfig(name="local", url=f"file://{volume / 'backups'}")
    setup = write_setup(tmp_path, database, storage)
    for _ in range(3):
        assert setup.run("backup", "now").returncode == 0
    _fill(volume)

    result = setup.run("prune")

    assert result.returncode == 4, result.stderr
    line = one_line_error(result.stderr)
    assert "prune cannot write its lock" in line and "free a little space" in line
    assert "the other targets and storages were pruned" not in line
