"""``opskit drill restore --pitr`` against a real archiving cluster with a marker writer.

Each test builds the cluster of tests/wal/cluster.py, takes a base backup between two runs of
the marker writer, and drills it: the scratch server must recover the moment asked for, pass
pg_verifybackup and pg_amcheck, and be gone afterwards (no data directory, nothing on its port).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import socket
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opskit import catalog
from opskit.config.load import load_config, parse_config
from opskit.context import AppContext
from opskit.daemon.jobs import load_job
from opskit.daemon.ledger import SUCCESS, Ledger
from opskit.daemon.scheduler import Runner
from opskit.drill import pitr as pitr_drill
from opskit.ops.metrics import Metrics
from tests.databases import dsn_for
from tests.restore.test_pitr import write_markers
from tests.servers import REPO_ROOT
from tests.wal.cluster import ArchivingCluster, opskit_command

PHASES = ["fetch", "extract", "verifybackup", "replay", "verify"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def prepared(make: Callable[..., ArchivingCluster]) -> tuple[ArchivingCluster, list[tuple[int, datetime]]]:
    """Return a cluster with a base backup between 3 and 20 more markers, all WAL archived; and those markers."""
    cluster = make()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    write_markers(cluster, 3)
    backup = cluster.opskit("backup", "now", "--kind", "base")
    assert backup.returncode == 0, backup.stderr
    markers = write_markers(cluster, 20)
    cluster.wait_archived(cluster.switch_wal())
    return cluster, markers


def drill(cluster: ArchivingCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``opskit drill restore --pitr`` on the cluster's config with the server-side opskit command."""
    return cluster.opskit(
        "drill",
        "restore",
        "--pitr",
        "--opskit-command",
        shlex.join(opskit_command()),
        "--scratch-dir",
        str(cluster.root / "scratch"),
        *args,
    )


def assert_scratch_gone(report: dict[str, Any]) -> None:
    """The scratch server was stopped (nothing listens on its port) and its directory removed."""
    cleanup = report["cleanup"]
    assert cleanup["action"] == "removed", cleanup
    assert not Path(cleanup["pgdata"]).exists()
    assert not Path(cleanup["pgdata"]).parent.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(cleanup["port"]))) != 0
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert cleanup["pgdata"] not in processes


def test_a_drill_to_a_time_between_two_markers_passes_and_reports_each_phase_and_the_moment(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path
) -> None:
    cluster, markers = prepared(archiving_cluster)
    before, after = markers[9], markers[10]
    moment = before[1] + (after[1] - before[1]) / 2

    result = drill(cluster, "--to-time", moment.isoformat(), "--report-dir", str(tmp_path), "--json")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass" and report["mode"] == "pitr"
    assert [p["name"] for p in report["phases"]] == PHASES
    assert _time(report["pitr"]["chosen_time"]) == moment.astimezone(UTC)
    reached = _time(report["pitr"]["reached"]["last_transaction_time"])
    assert before[1] <= reached <= moment  # the earlier marker's commit is the last one replayed
    target = next(c["actual"] for c in report["checks"] if c["name"] == "recovery reached the target")
    assert "; recovery stopped before commit of transaction " in target, target
    assert _time(target.rsplit(" at ", 1)[1]) > moment  # the commit it stopped before came after the moment
    assert report["pitr"]["reached"]["timeline"] == 2
    names = {c["name"] for c in report["checks"] if c["ok"]}
    assert {"stored sha256", "pg_verifybackup", "pg_amcheck heap and btree, all databases"} <= names
    assert {"recovery reached the target", "no invalid indexes", "sequences at or past their columns"} <= names
    assert {s["name"] for s in report["skipped_checks"]} >= {"row counts", "content fingerprints"}
    assert report["rto"]["measured_seconds"] > 0 and report["rto"]["status"] != catalog.RTO_UNMEASURED
    markdown = (tmp_path / f"{report['drill_id']}.md").read_text()
    assert "## Point-in-time recovery" in markdown and report["pitr"]["chosen_time"] in markdown
    assert "verifybackup" in (tmp_path / f"{report['drill_id']}.html").read_text()
    assert_scratch_gone(report)
    status = json.loads(cluster.opskit("status", "--json").stdout)
    assert report["drill_id"] in json.dumps(status)  # status shows the last (PITR) drill


def test_a_random_time_lands_inside_the_window_and_is_recorded(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster, _markers = prepared(archiving_cluster)

    result = drill(cluster, "--random-time", "--json")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = json.loads(result.stdout)
    window = report["pitr"]["window"]
    chosen = _time(report["pitr"]["chosen_time"])
    assert report["pitr"]["random_time"] is True
    assert _time(window["start"]) <= chosen <= _time(window["end"])
    reached = report["pitr"]["reached"]["last_transaction_time"]
    assert reached is None or _time(reached) <= chosen
    assert_scratch_gone(report)


def test_without_a_moment_or_past_the_last_archived_transaction_the_drill_recovers_the_archives_end(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster, markers = prepared(archiving_cluster)
    last = markers[-1][1]

    latest = drill(cluster, "--json")
    window_end = json.loads(latest.stdout)["pitr"]["window"]["end"]
    # The window ends when the newest segment was archived, after its last commit: PostgreSQL
    # would stop short of the target ("recovery ended before ... target was reached").
    at_end = drill(cluster, "--to-time", window_end, "--json")

    for result in (latest, at_end):
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        report = json.loads(result.stdout)
        assert _time(report["pitr"]["reached"]["last_transaction_time"]) >= last
        assert "recovery reached the target" in {c["name"] for c in report["checks"] if c["ok"]}
        assert_scratch_gone(report)
    assert json.loads(latest.stdout)["pitr"]["target"] == "the end of the archived WAL"
    assert any("recovered to its end" in w for w in json.loads(at_end.stdout)["warnings"])


def test_with_keep_the_scratch_server_answers_where_it_says_until_its_stop_command_runs(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster, markers = prepared(archiving_cluster)

    result = drill(cluster, "--keep")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    lines = {
        line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in result.stdout.splitlines() if ": " in line
    }
    connect = shlex.split(lines["scratch server kept"].removeprefix("connect with "))
    stop, remove = (shlex.split(part) for part in lines["stop and remove it with"].split(" && "))
    pgdata = Path(stop[stop.index("-D") + 1])
    try:
        assert connect[0] == "psql"
        with psycopg.connect(connect[1]) as conn:
            count = conn.execute("SELECT count(*) FROM markers").fetchone()
        assert count == (3 + len(markers),)
    finally:
        subprocess.run(stop, capture_output=True, check=False)
    subprocess.run(remove, check=True)
    assert not pgdata.exists() and not (pgdata / "postmaster.pid").exists()


def test_a_moment_outside_the_window_fails_with_one_line_and_exit_2(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster, markers = prepared(archiving_cluster)
    early = markers[0][1] - timedelta(hours=1)

    result = drill(cluster, "--to-time", early.isoformat())

    assert result.returncode == 2
    first = result.stderr.strip().splitlines()[0]
    assert "is outside the PITR window" in first, result.stderr
    assert not (cluster.root / "scratch").exists() or not any((cluster.root / "scratch").iterdir())
    assert not list((cluster.archive_dir / "app").glob("drills/*.json"))


def test_a_damaged_restored_file_fails_pg_verifybackup_and_the_drill(
    archiving_cluster: Callable[..., ArchivingCluster],
) -> None:
    cluster, _markers = prepared(archiving_cluster)
    ctx = AppContext(config=load_config(cluster.config_path))

    def damage(pgdata: Path) -> None:
        with open(pgdata / "PG_VERSION", "a", encoding="utf-8") as version:
            version.write("damaged\n")

    report = pitr_drill.run(
        ctx,
        target="app",
        scratch_dir=cluster.root / "scratch",
        opskit_command=shlex.join(opskit_command()),
        before_verify=damage,
    )

    assert report.verdict == "fail" and report.exit_code == 5
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["pg_verifybackup"]
    assert "PG_VERSION" in str(failed[0].actual)
    assert report.to_dict()["rto"]["status"] == catalog.RTO_UNMEASURED  # nothing was recovered
    assert report.cleanup["action"] == "removed" and not Path(report.cleanup["pgdata"]).exists()


def test_the_quarterly_pitr_drill_job_runs_it_to_the_end_of_the_archive_or_a_random_moment(
    archiving_cluster: Callable[..., ArchivingCluster], pg_database: str
) -> None:
    cluster, _markers = prepared(archiving_cluster)
    config = load_config(cluster.config_path)
    job = load_job(REPO_ROOT / "jobs" / "quarterly-pitr-drill.toml", config)
    assert job.action == "drill" and job.args["pitr"] is True and job.args["random_time"] is True
    # The server runs the restore_command as postgres, which cannot enter this test's virtualenv.
    job = dataclasses.replace(
        job,
        args={
            **job.args,
            "opskit_command": shlex.join(opskit_command()),
            "scratch_dir": str(cluster.root / "scratch"),
        },
    )
    ledger = Ledger(dsn_for(pg_database), table="runs", owner="a")
    ledger.ensure_table()
    runner = Runner(config, ledger, Metrics())

    outcome = runner.fire(job, slot=datetime(2027, 1, 5, 6, tzinfo=UTC))

    assert outcome is not None and outcome.result == SUCCESS, outcome
    store = AppContext(config=config).storage("local")
    newest = catalog.latest_drill(store, "app")
    assert newest is not None and newest.passed
    stored = json.loads((cluster.archive_dir / "app" / "drills" / f"{newest.drill_id}.json").read_text())
    assert stored["mode"] == "pitr" and stored["trigger"] == "schedule" and stored["pitr"]["chosen_time"]
    assert_scratch_gone(stored)


@pytest.mark.parametrize("flag", ["--random-time", "--to-time"])
def test_pitr_moments_without_pitr_are_refused(archiving_cluster: Callable[..., ArchivingCluster], flag: str) -> None:
    cluster = archiving_cluster()
    args = [flag] + (["2026-12-01T00:00:00Z"] if flag == "--to-time" else [])

    result = cluster.opskit("drill", "restore", *args)

    assert result.returncode == 2
    assert "need --pitr" in result.stderr


def test_the_scratch_directory_of_pitr_drills_is_a_drill_setting() -> None:
    settings = parse_config('[drill]\nscratch_dir = "/var/tmp/drills"\n').drill
    assert settings is not None and settings.scratch_dir == "/var/tmp/drills"
    assert "# scratch_dir = " in (REPO_ROOT / "config.example.toml").read_text()
