"""What ``restore --pitr`` writes into and leaves in its ``--pgdata``, against one real archiving cluster.

The source cluster, its base backup and the WAL after it are made once for the module; each
test restores into a directory of its own, most from a private copy of the archive (so it
may damage or split the copy without touching the others).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.restore import pitr, pitr_model, pitr_settings
from tests.faults.helpers import run_opskit
from tests.pgcluster import as_postgres
from tests.restore.test_pitr import marker_ids, write_markers
from tests.wal.cluster import (
    ArchivingCluster,
    config_text,
    give_to_postgres,
    opskit_command,
    pitr_start_args,
    start_archiving_cluster,
)


@dataclass(frozen=True)
class Source:
    """The module's archiving cluster, its one base backup and the id of the newest marker row archived."""

    cluster: ArchivingCluster
    backup_id: str
    wal_start: str
    wal_stop: str
    newest_marker: int


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    """A cluster with a base backup and ten archived WAL segments of markers after it.

    Ten: more than the read-ahead's first batch (readahead.WINDOW), so a test can make a
    segment the server asks for only once it has started.
    """
    cluster = start_archiving_cluster()
    try:
        with cluster.connect() as conn:
            conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        write_markers(cluster, 2)
        backup = cluster.opskit("backup", "now", "--kind", "base", "--json")
        assert backup.returncode == 0, backup.stderr
        backup_id = json.loads(backup.stdout)["id"]
        manifest = json.loads((cluster.archive_dir / "app" / backup_id / "manifest.json").read_text())
        newest = 0
        closed = ""
        for _ in range(10):
            newest = write_markers(cluster, 1)[-1][0]
            closed = cluster.switch_wal()
        cluster.wait_archived(closed)
        base = manifest["base"]
        yield Source(cluster, backup_id, str(base["wal_start"]), str(base["wal_stop"]), newest)
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def private_copy(src: Source, name: str, storages: dict[str, Path] | None = None) -> Path:
    """Copy the module's archive to ``<root>/<name>/archive`` and return a config reading it (target ``app``).

    ``storages`` adds more ``file://`` storages to the config (the copy stays the primary, ``local``).
    """
    home = src.cluster.root / name
    archive = home / "archive"
    shutil.copytree(src.cluster.archive_dir, archive, symlinks=True)
    (home / "state").mkdir()
    config = home / "opskit.toml"
    text = config_text(src.cluster.dsn(), archive, home / "state")
    for extra, url in (storages or {}).items():
        text = text.replace('storages = ["local"]', f'storages = ["local", "{extra}"]', 1)
        text += f'\n[storages.{extra}]\nurl = "file://{url}"\n'
    config.write_text(text)
    give_to_postgres(home)
    return config


def opskit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with ``config`` and return its result (a restore that starts the server may take minutes)."""
    return run_opskit(config, *args, timeout=300)


def server_running(bin_dir: str, pgdata: Path) -> bool:
    """Return True when ``pg_ctl status`` finds a server running from ``pgdata``."""
    status = subprocess.run(as_postgres([f"{bin_dir}/pg_ctl", "-D", str(pgdata), "status"]), capture_output=True)
    return status.returncode == 0


# --------------------------------------------------------------------------- finding 3: settings left behind


def test_a_base_backup_carrying_an_old_recovery_target_and_log_restores_with_latest_to_its_newest_row(
    archiving_cluster: Callable[..., ArchivingCluster], restored_dirs: list[tuple[str, Path]]
) -> None:
    # What a promoted copy passes into its base backups: an earlier recovery's settings in
    # postgresql.auto.conf (no opskit block markers, as ALTER SYSTEM rewrites the file) and
    # its opskit-recovery.log, which says recovery stopped short.
    cluster = archiving_cluster()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("ALTER SYSTEM SET recovery_target_time = '2000-01-01 00:00:00+00'")
        conn.execute("ALTER SYSTEM SET recovery_target_action = 'shutdown'")
    stale_log = cluster.data_dir / "opskit-recovery.log"
    stale_log.write_text("FATAL:  recovery ended before configured recovery target was reached\n")
    give_to_postgres(stale_log)
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    markers = write_markers(cluster, 3)
    cluster.wait_archived(cluster.switch_wal())
    pgdata = cluster.root / "restored"
    restored_dirs.append((cluster.bin_dir, pgdata))

    report = cluster.recover_and_start(pgdata, "--latest")

    assert marker_ids(report["port"]) == [m[0] for m in markers]
    log = (pgdata / "opskit-recovery.log").read_text()
    assert "recovery ended before configured recovery target" not in log
    conf = (pgdata / "postgresql.auto.conf").read_text()
    assert conf.count(pitr_settings.SETTINGS_BEGIN) == 1
    assert "ALTER SYSTEM RESET archive_mode" in report["archiving"]


def test_a_second_restore_into_the_same_copy_replaces_opskits_block_instead_of_adding_one(tmp_path: Path) -> None:
    (tmp_path / "postgresql.auto.conf").write_text("# Do not edit this file manually!\nwork_mem = '8MB'\n")
    first = pitr_model.RecoveryTarget(lsn="0/3000000")

    pitr_settings.write_recovery_settings(tmp_path, "true", first, "b1")
    pitr_settings.write_recovery_settings(tmp_path, "true", pitr_model.RecoveryTarget(), "b2")

    lines = (tmp_path / "postgresql.auto.conf").read_text().splitlines()
    assert lines[:2] == ["# Do not edit this file manually!", "work_mem = '8MB'"]
    assert lines.count(pitr_settings.SETTINGS_BEGIN) == 1
    settings = dict(line.split(" = ", 1) for line in lines if " = " in line and not line.startswith("#"))
    assert settings["recovery_target_lsn"] == "''"  # the first restore's LSN is gone
    assert all(settings[name] == "''" for name in pitr_settings.TARGET_SETTINGS)
    assert settings["archive_mode"] == "'off'"
    assert (tmp_path / "recovery.signal").exists()


def test_the_chosen_recovery_target_is_written_after_the_empty_ones() -> None:
    # PostgreSQL checks for "multiple recovery targets" as each line is applied.
    settings = list(pitr_settings.recovery_settings("true", pitr_model.RecoveryTarget(name="before-upgrade")))

    targets = [name for name in settings if name in pitr_settings.TARGET_SETTINGS]
    assert targets[-1] == "recovery_target_name"
    assert sorted(targets) == sorted(pitr_settings.TARGET_SETTINGS)


# --------------------------------------------------------------------------- finding 11: two restores, one directory


def test_of_two_restores_into_one_new_directory_one_succeeds_and_the_other_stops_with_one_line(
    source: Source,
) -> None:
    config = source.cluster.config_path
    pgdata = source.cluster.root / "raced"
    go = source.cluster.root / "raced-go"
    args = ["--config", str(config), "restore", "--pitr", "--latest", "--pgdata", str(pgdata)]
    # Both CLIs import everything first and start together once `go` exists, so both look
    # at the directory within milliseconds, long before either extracts anything.
    start_together = (
        "import os, sys, time; import opskit.cli, opskit.cli.restore, opskit.restore.pitr\n"
        "open(sys.argv[1], 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        f"opskit.cli.main(args={args!r}, prog_name='opskit')\n"
    )
    ready = [source.cluster.root / f"raced-ready-{n}" for n in range(2)]
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", start_together, str(flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline and all(run.poll() is None for run in runs)
        time.sleep(0.01)
    go.touch()
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]

    codes = sorted(code for code, _out, _err in results)
    assert codes[0] == 0, results
    assert codes[1] in (2, 7), results
    loser = next(err for code, _out, err in results if code != 0)
    assert len(loser.strip().splitlines()) == 1, loser
    assert "another opskit run is restoring into" in loser or "not an empty directory" in loser
    conf = (pgdata / "postgresql.auto.conf").read_text()
    assert conf.count(pitr_settings.SETTINGS_BEGIN) == 1


def test_a_restore_into_a_directory_another_run_holds_exits_7_and_writes_nothing(source: Source) -> None:
    pgdata = source.cluster.root / "held"
    pgdata.mkdir(mode=0o700)
    fd = os.open(pgdata, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock a running restore holds

        result = opskit(source.cluster.config_path, "restore", "--pitr", "--latest", "--pgdata", str(pgdata))
    finally:
        os.close(fd)

    assert result.returncode == 7, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"another opskit run is restoring into --pgdata '{pgdata}'; this one wrote nothing" in lines[0]
    assert list(pgdata.iterdir()) == []


# --------------------------------------------------------------------------- finding 12: Ctrl-C during --start


def _unblock(fifo: Path) -> None:
    """Give every reader of ``fifo`` an end of file (nothing when none reads it)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


def test_ctrl_c_during_a_started_restore_stops_the_server_exits_130_and_the_retry_names_the_leftovers(
    source: Source, restored_dirs: list[tuple[str, Path]]
) -> None:
    config = private_copy(source, "interrupted")
    # A segment past the read-ahead's first batch never arrives: a named pipe no one writes.
    # The server starts, becomes consistent and then waits in recovery until it is stopped.
    segment = f"{int(source.wal_start[16:], 16) + 8:08X}"
    fifo = config.parent / "archive" / "app" / "wal" / f"{source.wal_start[:16]}{segment}.zst"
    fifo.unlink()
    os.mkfifo(fifo)
    give_to_postgres(fifo)
    pgdata = config.parent / "restored"
    restored_dirs.append((source.cluster.bin_dir, pgdata))
    run = subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(config), *pitr_start_args(pgdata, "--latest")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not server_running(source.cluster.bin_dir, pgdata):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the restored server did not start"
            time.sleep(0.2)
        time.sleep(1)  # opskit waits for the promotion now

        run.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        while run.poll() is None and time.monotonic() < interrupted + 60:
            if not (pgdata / "postmaster.pid").exists() or time.monotonic() > interrupted + 20:
                _unblock(fifo)  # the read-ahead's threads, still reading the pipe, let the process exit
            time.sleep(0.2)
        _out, err = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()

    assert run.returncode == 130, err
    assert not server_running(source.cluster.bin_dir, pgdata)
    assert not (pgdata / "postmaster.pid").exists()
    assert "was stopped" in err and "remove it" in err, err
    retry = opskit(config, *pitr_start_args(pgdata, "--latest"))
    assert retry.returncode == 2
    assert "holds an interrupted or failed opskit restore --pitr" in retry.stderr
    assert f"rm -r {pgdata}" in retry.stderr


def test_ctrl_c_after_the_extract_and_before_any_server_leaves_the_directory_as_it_was_found(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interrupt lands where the read-ahead waits for its first batch: after the extract and
    # the settings, before pg_ctl. Raised there in-process, the one point no timing can aim at.
    config = private_copy(source, "interrupted-early")
    pgdata = config.parent / "restored"
    extracted: list[int] = []

    def interrupted(*_args: object, **_kwargs: object) -> None:
        extracted.append(len(os.listdir(pgdata)))
        raise KeyboardInterrupt

    monkeypatch.setattr(pitr, "start_read_ahead", interrupted)
    ctx = AppContext(config=load_config(str(config)))

    with pytest.raises(KeyboardInterrupt):
        pitr.run(ctx, str(pgdata), target="app", start=True, opskit_command=shlex.join(opskit_command()))

    assert extracted and extracted[0] > 10  # a whole data directory was there when it was interrupted
    assert not pgdata.exists()  # opskit created it, and removed it again
    assert not server_running(source.cluster.bin_dir, pgdata)


# --------------------------------------------------------------------------- finding 14: paths with spaces


def test_a_data_directory_whose_path_holds_a_space_and_a_quote_starts_and_recovers(
    source: Source, restored_dirs: list[tuple[str, Path]]
) -> None:
    parent = source.cluster.root / "it's a dir"
    parent.mkdir()
    give_to_postgres(parent)
    pgdata = parent / "pg data"
    restored_dirs.append((source.cluster.bin_dir, pgdata))

    result = opskit(source.cluster.config_path, *pitr_start_args(pgdata, "--latest"))

    assert result.returncode == 0, result.stderr
    assert marker_ids(json.loads(result.stdout)["port"])[-1] == source.newest_marker


def test_a_data_directory_whose_path_pg_ctl_cannot_pass_is_refused_before_anything_is_written(
    source: Source,
) -> None:
    pgdata = source.cluster.root / 'say "cheese"'

    result = opskit(source.cluster.config_path, *pitr_start_args(pgdata, "--latest"))

    assert result.returncode == 2
    assert "which pg_ctl cannot pass to the server" in result.stderr
    assert not pgdata.exists()


def test_an_empty_directory_inside_a_live_clusters_data_directory_is_refused(source: Source) -> None:
    inside = source.cluster.data_dir / "pg_tblspc" / "restored"  # empty, and would pass the empty check

    result = opskit(source.cluster.config_path, *pitr_start_args(inside, "--latest"))

    assert result.returncode == 2, result.stderr
    assert f"lies inside the data directory of another cluster ('{source.cluster.data_dir}')" in result.stderr
    assert not inside.exists()


# --------------------------------------------------------------------------- finding 15: a failed extract


@pytest.mark.parametrize("made_before", [True, False], ids=["an empty directory", "a new directory"])
def test_a_corrupt_base_backup_leaves_the_data_directory_as_it_found_it(source: Source, made_before: bool) -> None:
    config = private_copy(source, f"corrupt-{made_before}")
    artifact = config.parent / "archive" / "app" / source.backup_id / "base.tar.zst"
    data = bytearray(artifact.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 64):
        data[offset] ^= 0xFF
    artifact.write_bytes(bytes(data))
    pgdata = config.parent / "restored"
    if made_before:
        pgdata.mkdir(mode=0o700)

    result = opskit(config, "restore", "--pitr", "--latest", "--pgdata", str(pgdata))

    assert result.returncode in (4, 5), result.stderr
    if made_before:
        assert list(pgdata.iterdir()) == []
    else:
        assert not pgdata.exists()


# --------------------------------------------------------------------------- finding 5: --storage


def test_a_restore_from_a_second_storage_fetches_its_wal_from_that_storage(
    source: Source, restored_dirs: list[tuple[str, Path]]
) -> None:
    offsite = source.cluster.root / "offsite"
    shutil.copytree(source.cluster.archive_dir, offsite, symlinks=True)
    give_to_postgres(offsite)
    config = private_copy(source, "two-storages", storages={"off": offsite})
    shutil.rmtree(config.parent / "archive" / "app" / "wal")  # the primary lost its WAL; the copy has it
    pgdata = config.parent / "restored"
    restored_dirs.append((source.cluster.bin_dir, pgdata))

    result = opskit(config, *pitr_start_args(pgdata, "--latest", "--storage", "off"))

    assert result.returncode == 0, result.stderr
    assert marker_ids(json.loads(result.stdout)["port"])[-1] == source.newest_marker
    assert "wal fetch --target app --storage off %f %p" in (pgdata / "postgresql.auto.conf").read_text()


def test_wal_fetch_reads_the_storage_it_is_given(source: Source, tmp_path: Path) -> None:
    offsite = source.cluster.root / "offsite-fetch"
    shutil.copytree(source.cluster.archive_dir, offsite, symlinks=True)
    config = private_copy(source, "fetch-storages", storages={"off": offsite})
    shutil.rmtree(config.parent / "archive" / "app" / "wal")

    from_primary = opskit(config, "wal", "fetch", source.wal_stop, str(tmp_path / "a"))
    from_offsite = opskit(config, "wal", "fetch", "--storage", "off", source.wal_stop, str(tmp_path / "b"))

    assert from_primary.returncode == 1
    assert from_offsite.returncode == 0, from_offsite.stderr
    assert (tmp_path / "b").stat().st_size == 16 * 1024 * 1024
