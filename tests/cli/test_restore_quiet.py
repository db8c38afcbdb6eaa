"""``opskit -q restore --clean --jobs N``: what stderr holds, by the convention of docs/cli.md.

``--quiet`` keeps warnings and errors ("only warnings and errors on stderr"), so the warning that
``--jobs`` is ignored (``--clean`` is one transaction, one connection) stays, and the info lines go.
"""

from __future__ import annotations

import json
from pathlib import Path

from opskit.storage.base import StorageConfig
from tests.databases import run_sql
from tests.restore.test_restore_destinations import backed_up, dsn

JOBS_IGNORED = "--clean restores in one transaction, on one connection: --jobs is ignored"


def _levels(stderr: str) -> dict[str, list[str]]:
    """Return the events of stderr's JSON log lines by level."""
    levels: dict[str, list[str]] = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            levels.setdefault(record["level"], []).append(record["event"])
    return levels


def test_the_jobs_ignored_warning_stays_and_the_info_lines_go_when_a_clean_restore_runs_with_quiet(
    tmp_path: Path, pg_database: str, local_storage: StorageConfig
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100);")
    setup = backed_up(tmp_path, pg_database, local_storage)
    restore = ("restore", "latest", "--to", dsn(pg_database), "--clean", "--jobs", "4")

    loud = setup.run("--log-format", "json", *restore)
    quiet = setup.run("--log-format", "json", "-q", *restore)

    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert _levels(loud.stderr)["warning"] == [JOBS_IGNORED]
    assert "restore finished" in _levels(loud.stderr)["info"]
    assert _levels(quiet.stderr) == {"warning": [JOBS_IGNORED]}
    assert "row counts match the manifest for all 1 tables" in quiet.stdout  # results are unchanged
