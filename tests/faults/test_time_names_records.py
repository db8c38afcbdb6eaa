"""Issue 14, cases 3-6: a wrong host clock, names that cannot be stored, manifests that lie, leftovers.

Each test runs the CLI against a real PostgreSQL database and a local-disk storage. Two real
backups are taken once per module; each test works on its own copy of that storage, and
"a host with a wrong clock" or "a record that lies" is made by editing a stored manifest,
which is what such a backup looks like to the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opskit.catalog import is_backup_id
from opskit.storage.base import StorageConfig
from tests.faults.helpers import (
    PG_HOST,
    Setup,
    create_database,
    databases_like,
    drop_database,
    local_root,
    one_line_error,
    slow_tools_dir,
    write_setup,
)

Edit = Callable[[dict[str, Any]], None]


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def two_backups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[str]]]:
    """Yield (database, a local storage directory holding two real backups of ``app``, their ids oldest first)."""
    base = tmp_path_factory.mktemp("two-backups")
    database = create_database(1)
    try:
        storage = StorageConfig(name="local", url=f"file://{base / 'storage'}")
        setup = write_setup(base / "cfg", database, storage)
        for _ in range(2):
            result = setup.run("backup", "now")
            assert result.returncode == 0, result.stderr
        ids = sorted(str(b["id"]) for b in setup.backups())
        yield database, base / "storage", ids
    finally:
        drop_database(database)


@pytest.fixture
def repo(two_backups: tuple[str, Path, list[str]], tmp_path: Path) -> Callable[..., tuple[Setup, list[str]]]:
    """Return a factory: a Setup on a fresh copy of the two backups (extra config text optional)."""
    database, template, ids = two_backups

    def make(extra: str = "", target_extra: str = "", retention: str | None = None) -> tuple[Setup, list[str]]:
        root = tmp_path / "storage"
        if not root.exists():
            shutil.copytree(template, root)
        storage = StorageConfig(name="local", url=f"file://{root}")
        setup = write_setup(tmp_path / "cfg", database, storage, extra=extra, target_extra=target_extra)
        if retention is not None:
            text = setup.path.read_text().replace(
                "[retention.std]\nkeep_last = 10\n", f"[retention.std]\n{retention}\n"
            )
            setup.path.write_text(text)
        return setup, list(ids)

    return make


def edit_manifest(setup: Setup, backup_id: str, edit: Edit) -> None:
    """Rewrite one stored manifest with ``edit`` applied to its JSON."""
    path = local_root(setup.storage) / "app" / backup_id / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def dated(moment: datetime) -> Edit:
    """Return an edit that moves a manifest's snapshot (and run times) to ``moment``."""

    def edit(data: dict[str, Any]) -> None:
        data["snapshot_time"] = data["started_at"] = _stamp(moment)
        data["finished_at"] = _stamp(moment + timedelta(seconds=5))

    return edit


A_YEAR_AHEAD = datetime.now(UTC) + timedelta(days=365)
TWO_DAYS_AGO = datetime.now(UTC) - timedelta(days=2)


# --------------------------------------------------------------------------- case 3: time


def test_a_future_dated_backup_is_flagged_by_list_and_never_picked_as_latest(repo: Any) -> None:
    setup, (older, newer) = repo()
    edit_manifest(setup, older, dated(A_YEAR_AHEAD))

    listed = {b["id"]: b for b in setup.backups()}
    assert listed[older]["future_dated"] is True
    assert listed[newer]["future_dated"] is False
    table = setup.run("backup", "list")
    assert re.search(rf"^{older}\s.*FUTURE-DATED", table.stdout, re.M), table.stdout

    verified = setup.run("backup", "verify", "latest", "--json")
    assert verified.returncode == 0, verified.stderr
    assert newer in verified.stdout and older not in verified.stdout
    assert "future-dated backup" in verified.stderr  # verify of any backup warns; here latest skipped it


def test_status_exits_6_naming_the_future_dated_backup_and_measures_the_rpo_without_it(repo: Any) -> None:
    setup, (older, newer) = repo()
    edit_manifest(setup, older, dated(A_YEAR_AHEAD))

    result = setup.run("status", "--target", "app")
    assert result.returncode == 6, result.stderr
    assert f"backup {older} is dated" in one_line_error(result.stderr)

    report = json.loads(setup.run("status", "--target", "app", "--json").stdout)["targets"][0]
    assert report["newest_backup"]["id"] == newer
    assert 0 <= report["rpo"]["current_seconds"] < 3600
    assert [b["id"] for b in report["future_dated"]] == [older]


def test_metrics_count_the_future_dated_backup_and_report_the_real_recovery_point(repo: Any) -> None:
    setup, (older, newer) = repo()
    real_snapshot = next(b["snapshot_time"] for b in setup.backups() if b["id"] == newer)
    edit_manifest(setup, older, dated(A_YEAR_AHEAD))

    result = setup.run("metrics")
    assert result.returncode == 0, result.stderr
    point = re.search(
        r'^opskit_backup_last_recovery_point_timestamp_seconds\{target="app"\} (\S+)$', result.stdout, re.M
    )
    assert point is not None
    expected = datetime.fromisoformat(str(real_snapshot).replace("Z", "+00:00")).timestamp()
    assert float(point.group(1)) == pytest.approx(expected)
    assert 'opskit_backups_future_dated{storage="local",target="app"} 1.0' in result.stdout


def test_prune_with_min_keep_0_refuses_to_delete_every_real_backup_for_a_future_dated_one(repo: Any) -> None:
    setup, (older, newer) = repo(retention='keep_within = "1h"\nmin_keep = 0')
    edit_manifest(setup, older, dated(TWO_DAYS_AGO))
    edit_manifest(setup, newer, dated(TWO_DAYS_AGO + timedelta(hours=1)))
    # A third "backup": a copy of the newer one's manifest under a new id, dated a year ahead.
    future_id = newer[:-4] + "ffff"
    shutil.copytree(local_root(setup.storage) / "app" / newer, local_root(setup.storage) / "app" / future_id)

    def to_future(data: dict[str, Any]) -> None:
        dated(A_YEAR_AHEAD)(data)
        data["id"] = future_id
        for artifact in data["artifacts"]:
            artifact["key"] = artifact["key"].replace(newer, future_id)

    edit_manifest(setup, future_id, to_future)

    result = setup.run("prune")
    assert result.returncode == 4, result.stderr
    assert "that are not future-dated; refusing to delete the last good backup" in one_line_error(result.stderr)
    assert sorted(str(b["id"]) for b in setup.backups()) == sorted([older, newer, future_id])


# --------------------------------------------------------------------------- case 4: names


@pytest.mark.parametrize("name", ["a/b", ".", "..", "", "has space", "-x"])
def test_a_target_name_that_cannot_be_a_key_segment_is_refused_at_load_with_exit_2(repo: Any, name: str) -> None:
    setup, _ = repo()
    quoted = json.dumps(name)
    setup.path.write_text(setup.path.read_text().replace("[targets.app]", f"[targets.{quoted}]"))

    result = setup.run("backup", "now", "--target", name)
    assert result.returncode == 2, result.stderr
    assert f"At 'targets.{quoted}': " in one_line_error(result.stderr)
    assert [p.name for p in local_root(setup.storage).iterdir()] == ["app"]  # nothing written anywhere


def test_a_storage_name_that_cannot_be_a_key_segment_is_refused_at_load(repo: Any) -> None:
    setup, _ = repo()
    setup.path.write_text(setup.path.read_text().replace("[storages.local]", '[storages."a/b"]'))

    result = setup.run("config", "check")
    assert result.returncode == 2
    assert "At 'storages.\"a/b\"': " in result.stdout + result.stderr


# --------------------------------------------------------------------------- case 5: records


def _drop_db_artifact(data: dict[str, Any]) -> None:
    data["artifacts"] = [a for a in data["artifacts"] if a["name"] != "db"]


def _tools_pg_dump_a_string(data: dict[str, Any]) -> None:
    data["tools"]["pg_dump"] = "15"


def _tools_major_a_string(data: dict[str, Any]) -> None:
    data["tools"]["pg_dump"]["major"] = "15"


def _negative_size(data: dict[str, Any]) -> None:
    data["artifacts"][0]["size"] = -1


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_drop_db_artifact, "'artifacts' has no 'db' artifact"),
        (_tools_pg_dump_a_string, "'tools.pg_dump' is not an object"),
        (_tools_major_a_string, "'tools.pg_dump.major' is not a non-negative integer"),
        (_negative_size, "'artifacts.db.size' is negative"),
    ],
    ids=["no db artifact", "tools.pg_dump a string", "major a string", "negative size"],
)
def test_verify_and_restore_report_a_malformed_manifest_as_corrupt_with_exit_5(
    repo: Any, edit: Edit, field: str
) -> None:
    setup, (_, newer) = repo()
    edit_manifest(setup, newer, edit)

    for args in (("backup", "verify", newer), ("restore", newer, "--to", setup.database + "_restore_x")):
        result = setup.run(*args)
        assert result.returncode == 5, (args, result.stderr)
        assert f"manifest field {field}" in one_line_error(result.stderr)


def test_an_artifact_key_into_another_backups_folder_is_corrupt_and_restores_nothing(repo: Any) -> None:
    setup, (older, newer) = repo()
    older_db = json.loads((local_root(setup.storage) / "app" / older / "manifest.json").read_text())["artifacts"]

    def borrow(data: dict[str, Any]) -> None:
        data["artifacts"] = older_db  # sizes and hashes match: only the key gives it away

    edit_manifest(setup, newer, borrow)

    verify = setup.run("backup", "verify", newer)
    assert verify.returncode == 5, verify.stderr
    assert "manifest field 'artifacts.db.key'" in one_line_error(verify.stderr)
    restore = setup.run("restore", newer, "--to", setup.database + "_restore_borrowed")
    assert restore.returncode == 5, restore.stderr


def test_a_manifest_without_a_dump_never_counts_as_the_newest_verified_backup(repo: Any) -> None:
    setup, (older, newer) = repo(retention='keep_last = 0\nmin_keep = 0\nkeep_within = "1h"')
    edit_manifest(setup, older, dated(TWO_DAYS_AGO))
    assert setup.run("backup", "verify", older).returncode == 0
    edit_manifest(setup, newer, dated(TWO_DAYS_AGO + timedelta(hours=1)))
    edit_manifest(setup, newer, _drop_db_artifact)

    result = setup.run("prune", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["results"][0]["plan"]
    reasons = {d["id"]: d["reasons"] for d in plan["decisions"]}
    assert reasons == {older: ["newest verified"]}  # the dump-less manifest is not a backup at all


# --------------------------------------------------------------------------- case 6: leftovers


def _passfiles(setup: Setup) -> list[Path]:
    folder = setup.state_dir / "pgpass"
    return sorted(folder.glob("opskit-pgpass-*")) if folder.exists() else []


def test_a_sigkilled_backup_leaves_its_password_file_only_in_the_state_dir_and_the_next_run_removes_it(
    repo: Any, tmp_path: Path
) -> None:
    slow = slow_tools_dir(tmp_path, bytes_per_second=256 * 1024)
    setup, _ = repo(target_extra=f'password = "env:APP_DB_PASSWORD"\npg_bin_dir = "{slow}"')
    env = {"APP_DB_PASSWORD": "s3cret"}
    before_tmp = set(Path("/tmp").glob("opskit-pgpass-*"))

    process = _start_with_env(setup, env)
    deadline = time.monotonic() + 30
    while not _passfiles(setup) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _passfiles(setup), "the running backup wrote no password file in <state_dir>/pgpass"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    left = _passfiles(setup)
    assert len(left) == 1
    assert stat.S_IMODE((setup.state_dir / "pgpass").stat().st_mode) == 0o700
    assert set(Path("/tmp").glob("opskit-pgpass-*")) == before_tmp  # nothing in /tmp

    setup.path.write_text(setup.path.read_text().replace(f'pg_bin_dir = "{slow}"', ""))
    result = setup.run("backup", "now", env=env)
    assert result.returncode == 0, result.stderr
    assert _passfiles(setup) == []


def _start_with_env(setup: Setup, env: dict[str, str]) -> Any:
    import subprocess

    from tests.faults.helpers import cli_env

    return subprocess.Popen(
        setup.argv("backup", "now"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(env),
        cwd=setup.path.parent,
        start_new_session=True,
    )


def test_prune_removes_the_empty_folders_failed_runs_left(repo: Any) -> None:
    setup, ids = repo()
    app = local_root(setup.storage) / "app"
    empty = app / "20200101T000000Z-dead"
    with_temp = app / "20200101T000001Z-beef"
    empty.mkdir()
    with_temp.mkdir()
    (with_temp / ".opskit-tmp-db.dump.zst.1234").write_bytes(b"partial")
    old = time.time() - 3600
    for path in (with_temp / ".opskit-tmp-db.dump.zst.1234", with_temp, empty):
        os.utime(path, (old, old))

    result = setup.run("prune", "--grace", "0s")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in app.iterdir() if is_backup_id(p.name)) == sorted(ids)  # not other records


STAGING = f"""
[targets.staging]
dsn = "host={PG_HOST} user=postgres dbname=postgres"
"""


def test_a_drill_of_a_manifest_without_a_dump_fails_with_exit_5_naming_the_field_and_restores_nothing(
    repo: Any,
) -> None:
    setup, (_, newer) = repo(extra=STAGING, target_extra='staging = "staging"')
    edit_manifest(setup, newer, _drop_db_artifact)
    staging_db = f"{setup.database}_drill"

    result = setup.run("drill", "restore", "--target", "app", "--backup", newer, "--database", staging_db)

    assert result.returncode == 5, result.stderr
    assert "manifest readable" in one_line_error(result.stderr)
    report = next((local_root(setup.storage) / "app" / "drills").glob("*.json")).read_text()
    assert "manifest field 'artifacts' has no 'db' artifact" in report
    assert databases_like(staging_db) == []


def test_a_drill_of_latest_skips_a_future_dated_backup(repo: Any) -> None:
    setup, (older, newer) = repo(extra=STAGING, target_extra='staging = "staging"')
    edit_manifest(setup, older, dated(A_YEAR_AHEAD))
    staging_db = f"{setup.database}_drill"

    result = setup.run("drill", "restore", "--target", "app", "--database", staging_db, "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backup"]["id"] == newer
    assert databases_like(staging_db) == []


def test_verify_all_reports_a_malformed_manifest_among_the_good_ones(repo: Any) -> None:
    setup, (older, newer) = repo()
    edit_manifest(setup, newer, _tools_pg_dump_a_string)

    result = setup.run("backup", "verify", "--all")

    assert result.returncode == 5, result.stderr
    line = one_line_error(result.stderr)
    assert f"1 of 2 backup(s) failed verification: backup {newer}: manifest field 'tools.pg_dump'" in line
    assert older not in line
