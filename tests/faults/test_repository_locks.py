"""Faults: operations that are each correct alone, run at the same time on one repository.

Case 1 of issue 14: ``prune --grace 0s`` while a backup sits between committing its dump and
writing its manifest. Case 2: a pin taken while a prune that planned to delete that backup
runs (S3, hundreds of backups). The repository locks (``opskit/catalog/locks.py``) make the
second run of a conflicting pair exit 7 naming the first; the invariants re-checked just
before a destructive step catch what the locks cannot (a lock removed with ``unlock --all``,
a writer that takes no lock).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from opskit.catalog import format_time, parse_time
from opskit.storage.base import StorageConfig
from tests.faults.helpers import (
    REAL_PG_BIN,
    Setup,
    local_root,
    one_line_error,
    s3_objects,
    wait_for,
    write_setup,
)
from tests.servers import s3_client

# --------------------------------------------------------------------------- a backup held before its manifest


def gated_globals_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Return (tools dir, started marker, go file) for a ``pg_dumpall`` that waits for the test.

    The wrapper's ``pg_dumpall`` runs after ``db.dump.zst`` is committed: it touches the marker,
    waits until the go file exists (60 s at most) and then runs the real one. So the backup
    sits exactly between its dump and its manifest for as long as the test needs.
    """
    tools = tmp_path / "gated-bin"
    tools.mkdir()
    started, go = tmp_path / "globals-started", tmp_path / "globals-go"
    (tools / "pg_dump").symlink_to(f"{REAL_PG_BIN}/pg_dump")
    script = tools / "pg_dumpall"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            if [ "$1" = "--version" ]; then exec {REAL_PG_BIN}/pg_dumpall --version; fi
            touch {started}
            for i in $(seq 600); do [ -e {go} ] && break; sleep 0.1; done
            exec {REAL_PG_BIN}/pg_dumpall "$@"
            """
        )
    )
    script.chmod(0o755)
    return tools, started, go


def dump_files(setup: Setup) -> list[Path]:
    """Return the committed dumps of target ``app`` in a local storage."""
    return sorted(local_root(setup.storage).glob("app/*/db.dump.zst"))


@pytest.fixture
def held_backup(
    tmp_path: Path, database: str, local_storage: StorageConfig
) -> Iterator[tuple[Setup, subprocess.Popen[str], Path]]:
    """Start a backup and yield (setup, process, go file) once its dump is committed and its manifest is not."""
    tools, started, go = gated_globals_dir(tmp_path)
    setup = write_setup(tmp_path / "cfg", database, local_storage, target_extra=f'pg_bin_dir = "{tools}"')
    backup = setup.start("backup", "now")
    try:
        wait_for(started.exists, timeout=60, what="the backup to reach pg_dumpall")
        assert len(dump_files(setup)) == 1 and not list(local_root(local_storage).glob("app/*/manifest.json"))
        yield setup, backup, go
    finally:
        go.touch()
        if backup.poll() is None:
            backup.communicate(timeout=60)


def test_a_prune_with_no_grace_beside_a_running_backup_exits_7_and_the_backup_restores(
    held_backup: tuple[Setup, subprocess.Popen[str], Path],
) -> None:
    setup, backup, go = held_backup

    prune = setup.run("prune", "--grace", "0s")
    go.touch()
    _out, err = backup.communicate(timeout=60)

    assert prune.returncode == 7, prune.stdout + prune.stderr
    line = one_line_error(prune.stderr)
    assert f"is locked by backup (shared) by pid {backup.pid} on host" in line
    assert "this prune changed nothing" in line
    assert backup.returncode == 0, err
    [listed] = setup.backups()
    assert [p.parent.name for p in dump_files(setup)] == [listed["id"]]
    restore = setup.run("restore", "latest", "--target", "app")
    assert restore.returncode == 0, restore.stderr
    assert not list(local_root(setup.storage).glob("app/locks/*")), "every lock is released"


def test_a_backup_whose_dump_vanished_before_its_manifest_exits_4_and_commits_nothing(
    held_backup: tuple[Setup, subprocess.Popen[str], Path],
) -> None:
    setup, backup, go = held_backup

    [dump] = dump_files(setup)
    dump.unlink()  # what a prune of an opskit without locks did, or one after 'opskit unlock --all'
    go.touch()
    _out, err = backup.communicate(timeout=60)

    assert backup.returncode == 4, err
    line = one_line_error(err)
    assert f"artifact '{dump.relative_to(local_root(setup.storage))}'" in line and "is missing" in line
    assert "no manifest was written" in line
    assert setup.backups() == []


# --------------------------------------------------------------------------- a pin beside a prune (S3, many backups)

BACKUPS = 300


@pytest.fixture
def many_backups(tmp_path: Path, database: str, s3_bucket: StorageConfig) -> tuple[Setup, list[str]]:
    """Return (setup, backup ids oldest first): one real backup on S3 and 299 older copies of it.

    The copies are the real backup's objects copied server-side under new ids, with manifests
    whose id and snapshot time say so: each is a complete backup that lists, verifies and restores.
    """
    setup = write_setup(tmp_path / "cfg", database, s3_bucket)
    made = setup.run("backup", "now")
    assert made.returncode == 0, made.stderr
    [real] = setup.backups()
    client: Any = s3_client(str(s3_bucket.options["endpoint_url"]))
    bucket, _, prefix = s3_bucket.url.removeprefix("s3://").partition("/")
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{base}app/{real['id']}/manifest.json")["Body"].read())
    when = parse_time(manifest["snapshot_time"])
    ids = []
    for n in range(BACKUPS - 1, 0, -1):
        moment = when - timedelta(hours=n)
        backup_id = moment.strftime("%Y%m%dT%H%M%SZ") + f"-{n:04x}"
        copy = json.loads(json.dumps(manifest))
        copy["id"], copy["snapshot_time"] = backup_id, format_time(moment)
        for artifact in copy["artifacts"]:
            old_key = artifact["key"]
            artifact["key"] = old_key.replace(str(real["id"]), backup_id)
            client.copy_object(
                Bucket=bucket, Key=base + artifact["key"], CopySource={"Bucket": bucket, "Key": base + old_key}
            )
        client.put_object(Bucket=bucket, Key=f"{base}app/{backup_id}/manifest.json", Body=json.dumps(copy).encode())
        ids.append(backup_id)
    return setup, [*ids, str(real["id"])]


def test_a_pin_while_a_prune_runs_exits_7_naming_the_prune_and_is_not_silently_lost(
    many_backups: tuple[Setup, list[str]],
) -> None:
    setup, ids = many_backups
    oldest = ids[0]  # planned for deletion (keep_last = 10) and deleted last: the plan goes newest first
    _bucket, _, prefix = setup.storage.url.removeprefix("s3://").partition("/")
    first_doomed = f"{prefix.strip('/')}/app/{ids[-11]}/manifest.json".lstrip("/")

    prune = setup.start("prune")
    wait_for(lambda: first_doomed not in s3_objects(setup.storage), timeout=120, what="the prune's first delete")
    pin = setup.run("backup", "pin", oldest)
    _out, prune_err = prune.communicate(timeout=300)

    assert pin.returncode == 7, pin.stdout + pin.stderr
    line = one_line_error(pin.stderr)
    assert f"is locked by prune (exclusive) by pid {prune.pid} on host" in line
    assert "this pin changed nothing" in line
    assert prune.returncode == 0, prune_err
    listed = [str(b["id"]) for b in setup.backups()]
    assert listed == list(reversed(ids[-10:]))
    assert not [key for key in s3_objects(setup.storage) if oldest in key], "nothing of the backup, no orphan pin"
    assert not [key for key in s3_objects(setup.storage) if "/locks/" in f"/{key}"]


def test_a_pin_written_behind_the_prunes_back_is_honoured_before_each_delete(
    many_backups: tuple[Setup, list[str]],
) -> None:
    setup, ids = many_backups
    oldest = ids[0]
    client: Any = s3_client(str(setup.storage.options["endpoint_url"]))
    bucket, _, prefix = setup.storage.url.removeprefix("s3://").partition("/")
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""

    first_doomed = f"{base}app/{ids[-11]}/manifest.json"  # the newest backup past keep_last: deleted first

    prune = setup.start("prune", "--json")
    wait_for(lambda: first_doomed not in s3_objects(setup.storage), timeout=120, what="the prune's first delete")
    # The plan is made; a writer that takes no lock (an older opskit, a person at the S3
    # console) pins the backup the prune will delete last.
    client.put_object(Bucket=bucket, Key=f"{base}app/{oldest}/pin.json", Body=b'{"note": "keep"}')
    out, err = prune.communicate(timeout=300)

    assert prune.returncode == 0, err
    [result] = json.loads(out)["results"]
    assert result["pinned_since_plan"] == [oldest]
    assert oldest not in result["deleted"]
    listed = [str(b["id"]) for b in setup.backups()]
    assert oldest in listed and len(listed) == 11
    assert f"{base}app/{oldest}/pin.json" in s3_objects(setup.storage)


# --------------------------------------------------------------------------- opskit unlock


def test_unlock_removes_a_dead_runs_lock_keeps_a_live_one_and_all_removes_both(
    tmp_path: Path, local_storage: StorageConfig
) -> None:
    import socket

    from opskit.catalog import LockRecord
    from opskit.storage.registry import open_storage

    storage = open_storage(local_storage)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = datetime.now(UTC)
    dead = LockRecord(
        "20261201T000000Z-00000000dead", "app", "prune", True, socket.gethostname(), int(gone.stdout), now, now
    )
    live = LockRecord("20261201T000000Z-00000000a11e", "app", "backup", False, "db2", 4242, now, now)
    for record in (dead, live):
        assert storage.create(record.key, record.to_json())
    setup = write_setup(tmp_path / "cfg", "postgres", local_storage)

    dry = setup.run("unlock", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [r["key"] for r in json.loads(dry.stdout)["removed"]] == [dead.key]
    assert storage.exists(dead.key)

    stale = setup.run("unlock")
    assert stale.returncode == 0, stale.stderr
    assert f"removed lock {dead.key}" in stale.stdout
    assert (
        "kept live lock of target 'app' in storage 'local': backup (shared) by pid 4242 on host 'db2'" in stale.stdout
    )
    assert not storage.exists(dead.key) and storage.exists(live.key)

    everything = setup.run("unlock", "--all")
    assert everything.returncode == 0, everything.stderr
    assert [info.key for info in storage.list("app/locks/")] == []


def test_the_sweep_never_touches_the_folder_of_a_run_whose_lock_is_alive_whatever_the_grace(
    tmp_path: Path, local_storage: StorageConfig
) -> None:
    from opskit.catalog import LockRecord
    from opskit.storage.registry import open_storage

    storage = open_storage(local_storage)
    running = "20261201T000000Z-beef"
    with storage.writer(f"app/{running}/db.dump.zst") as out:
        out.write(b"a dump whose manifest is not written yet")
    now = datetime.now(UTC)
    lock = LockRecord("20261201T000000Z-0000000b4c4f", "app", "backup", False, "db2", 4242, now, now, running)
    assert storage.create(lock.key, lock.to_json())
    setup = write_setup(tmp_path / "cfg", "postgres", local_storage)

    dry = setup.run("prune", "--dry-run", "--grace", "0s", "--json")
    real = setup.run("prune", "--grace", "0s")
    assert setup.run("unlock", "--all").returncode == 0
    after = setup.run("prune", "--grace", "0s", "--json")

    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["results"][0]["swept"] == []
    assert real.returncode == 7 and "locked by backup (shared) by pid 4242 on host 'db2'" in one_line_error(real.stderr)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["results"][0]["swept"] == [f"app/{running}/db.dump.zst"]


def test_a_backup_stopped_by_sigterm_before_its_manifest_exits_130_and_leaves_no_lock(
    held_backup: tuple[Setup, subprocess.Popen[str], Path],
) -> None:
    setup, backup, _go = held_backup

    backup.send_signal(signal.SIGTERM)
    _out, err = backup.communicate(timeout=60)

    assert backup.returncode == 130, err
    assert not list(local_root(setup.storage).glob("app/locks/*")), "the lock was released on SIGTERM"
    assert setup.backups() == []
    assert setup.run("prune", "--grace", "0s").returncode == 0, "nothing blocks the next prune"
