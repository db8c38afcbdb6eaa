"""``recover-before-incident`` chooses its path itself: point-in-time recovery when the WAL archive covers the moment.

The shipped runbook asks ``opskit wal covers`` (``when``/``unless`` steps): on a cluster that
archives its WAL it recovers to the incident's moment on a kept scratch server and skips the
logical path; ``wal covers`` answers 0 inside the window and 1 outside it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from opskit import catalog
from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.runbooks import runbook
from opskit.runbooks.model import OK, SKIPPED
from tests.restore.test_pitr import write_markers
from tests.servers import REPO_ROOT
from tests.wal.cluster import ArchivingCluster, opskit_command


@pytest.fixture
def scratch_servers() -> Iterator[list[Path]]:
    """Scratch directories whose kept servers are stopped at the end."""
    dirs: list[Path] = []
    yield dirs
    for scratch in dirs:
        for pid_file in scratch.rglob("postmaster.pid"):
            subprocess.run(
                ["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(pid_file.parent), "-m", "immediate", "stop"],
                capture_output=True,
                check=False,
                env={"PATH": "/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            )


def test_recover_before_incident_recovers_the_moment_by_pitr_when_the_wal_covers_it(
    archiving_cluster: Callable[..., ArchivingCluster], tmp_path: Path, scratch_servers: list[Path]
) -> None:
    cluster = archiving_cluster()
    scratch = cluster.root / "scratch"
    scratch_servers.append(scratch)
    text = cluster.config_path.read_text().replace(
        "[tools]\n", f"[tools]\nopskit_command = {shlex.join(opskit_command())!r}\n"
    )
    cluster.config_path.write_text(text + f'\n[drill]\nscratch_dir = "{scratch}"\n')
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE markers (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 50)")
    assert cluster.opskit("backup", "now", "--kind", "base").returncode == 0
    markers = write_markers(cluster, 10)
    incident = markers[-1][1]
    with cluster.connect() as conn:
        conn.execute("DELETE FROM orders WHERE id > 40")  # the incident
    cluster.wait_archived(cluster.switch_wal())
    before = catalog.format_time(incident)

    inside = cluster.opskit("wal", "covers", "--target", "app", before)
    outside = cluster.opskit("wal", "covers", "--target", "app", "2020-01-01T00:00:00Z")
    assert inside.returncode == 0 and "is inside the PITR window of target 'app'" in inside.stdout
    assert outside.returncode == 1 and "is outside the PITR window" in outside.stdout

    lines: list[str] = []
    result = runbook.run(
        AppContext(config=load_config(cluster.config_path)),
        "recover-before-incident",
        variables={"before": before, "tables": "public.orders"},
        yes=True,
        echo=lines.append,
        directory=REPO_ROOT / "runbooks",
        transcript_dir=tmp_path / "transcripts",
    )

    assert result.ok, "\n".join(lines)
    statuses = {r.step.name: r.status for r in result.results}
    assert (
        statuses["The WAL archive covers the moment: recover to it on a scratch server that stays up, and verify it"]
        == OK
    )
    assert (
        statuses["No WAL covers the moment: restore the newest backup before it into staging, and verify it"] == SKIPPED
    )
    assert statuses["Recovered copy: rows per table"] == SKIPPED
    production = next(r.output for r in result.results if r.step.name == "Production now: rows per table")
    assert "public.orders | 40" in production
    # The kept scratch server holds the data as it was at the moment: all 50 orders.
    drill_output = next(r.output for r in result.results if r.step.kind == "opskit" and r.status == OK)
    port = next(int(word.split("=", 1)[1]) for word in drill_output.split() if word.startswith("port="))
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres") as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)
