"""SIGHUP re-reads the job files; it never kills the daemon in the middle of a run.

SIGHUP is what ``systemctl reload``, ``docker kill -s HUP`` and a closed terminal send. Its
default action ended the daemon at once: exit 129, no log line, the running backup's ledger row
left ``running`` and its temp file behind. Now a good change is scheduled, a broken job file is
refused with one error line while the current jobs keep running, and a run in progress finishes.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.daemon.ledger import SUCCESS, Ledger
from tests.daemon.test_process import Daemon, start_daemon, wait_for  # noqa: F401 (start_daemon is a fixture)

pytestmark = pytest.mark.timeout(120)


def test_sighup_during_a_run_reloads_the_job_files_refusing_a_broken_one_and_the_run_finishes(
    pg_database: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    started = tmp_path / "hook-started"
    config = (
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\n'
        '[daemon]\nshutdown_grace = "30s"\n'
        # A before hook of 3 s holds the backup open while the signals arrive.
        f'[[hooks.before]]\nverbs = ["backup"]\ncommand = ["/bin/sh", "-c", "touch {started}; sleep 3"]\n'
    )
    daemon = start_daemon(config, {"hourly": 'action = "backup"\ntarget = "app"\ninterval = "1h"\n'})
    jobs_dir = tmp_path / "d" / "jobs"
    wait_for(started.exists, 30, "the backup's hook to start", daemon)

    # A broken file saved while the daemon runs: refused, named, and nothing else changes.
    (jobs_dir / "broken.toml").write_text('action = "bakup"\ninterval = "2s"\n')
    daemon.process.send_signal(signal.SIGHUP)
    refused = wait_for(
        lambda: [
            e for e in daemon.events() if e["event"] == "job files not reloaded: the daemon keeps its current jobs"
        ],
        15,
        "the reload to be refused",
        daemon,
    )
    assert refused[0]["error"].startswith(
        f"job file {Path('jobs') / 'broken.toml'}: At 'action': unknown action 'bakup'"
    )
    assert refused[0]["jobs"] == ["hourly"]
    assert daemon.process.poll() is None

    # The fix and a new job: scheduled without a restart, while the backup still runs.
    (jobs_dir / "broken.toml").unlink()
    (jobs_dir / "often.toml").write_text('action = "status"\ntarget = "app"\ninterval = "2s"\n')
    daemon.process.send_signal(signal.SIGHUP)
    reloaded = wait_for(
        lambda: [e for e in daemon.events() if e["event"] == "job files reloaded"], 15, "the reload", daemon
    )
    assert reloaded[0]["added"] == ["often"] and reloaded[0]["removed"] == []
    ledger = Ledger(pg_database)
    wait_for(lambda: [r for r in ledger.runs("often") if r["result"] == SUCCESS], 20, "the new job to run", daemon)
    wait_for(lambda: [r for r in ledger.runs("hourly") if r["result"] == SUCCESS], 20, "the backup to end", daemon)

    assert daemon.terminate() == 0, daemon.log()[-3000:]
    assert [run["result"] for run in ledger.runs("hourly")] == [SUCCESS]
    assert any(e["event"] == "backup committed" for e in daemon.events())
    backups = tmp_path / "backups" / "app"
    assert not list(backups.rglob(".opskit-tmp-*"))
