"""A base backup and a ``tools.state_dir`` that cannot be created: needed only for a password file, checked before the lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.wal.cluster import ArchivingCluster


def below_a_file(cluster: ArchivingCluster, target_extra: str = "") -> Path:
    """Point the cluster's config at a state_dir below a regular file (as ./.opskit-state in a read-only cwd); return it."""
    blocker = cluster.root / "a-file"
    blocker.write_text("not a directory\n")
    state_dir = blocker / "state"
    text = cluster.config_path.read_text().replace(str(cluster.root / "state"), str(state_dir))
    cluster.config_path.write_text(text.replace('storages = ["local"]\n', f'storages = ["local"]\n{target_extra}\n'))
    return state_dir


def stored_outside_the_wal_archive(cluster: ArchivingCluster) -> list[Path]:
    """Return the files in the storage other than archived WAL and run records (the archive_command's, the run's signal)."""
    root = cluster.archive_dir / "app"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in ("wal", "runs"))


def test_a_base_backup_without_a_password_needs_no_state_dir_and_commits(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    state_dir = below_a_file(cluster)

    result = cluster.opskit("backup", "now", "--kind", "base", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "base"
    assert not state_dir.exists()


def test_a_base_backup_with_a_password_and_a_state_dir_that_cannot_be_created_exits_2_before_anything_is_written(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster = archiving_cluster()
    state_dir = below_a_file(cluster, 'password = "env:OPSKIT_T_DB_PASSWORD"')

    result = cluster.opskit(
        "backup", "now", "--kind", "base", "--json", env={"OPSKIT_T_DB_PASSWORD": "unused-with-trust"}
    )

    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("opskit: error:")]
    assert len(errors) == 1, result.stderr
    assert f"cannot prepare the password file directory {state_dir / 'pgpass'}: Not a directory" in errors[0]
    assert "tools.state_dir must be writable by opskit" in errors[0]
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    # Refused in preflight: no artifact, no manifest, no lock; nothing listed.
    assert stored_outside_the_wal_archive(cluster) == []
    assert cluster.opskit("backup", "list", "--json").stdout.strip() == "[]"
    assert "base backup started" not in result.stderr
