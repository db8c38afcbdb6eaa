"""Every job, not only backups, has run counts and last success/failure times on /metrics.

Before, ``/metrics`` counted only backup runs (``opskit_backup_runs_total``): a verify (or prune,
copy, drill) job failing every night raised no alert. Now ``opskit_job_runs_total{job_name,action,result}``
counts each job's runs, and ``opskit_job_last_success_timestamp_seconds`` /
``opskit_job_last_failure_timestamp_seconds`` say whether its newest run failed (what
``OpskitJobFailing`` compares). They come from the ledger at start, so a restarted daemon still
shows last night's failure before the job runs again.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.daemon.ledger import Ledger
from tests.daemon.test_process import Daemon, get, metric, start_daemon, wait_for  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(120)

PROMTOOL = shutil.which("promtool")


def test_a_failing_verify_job_is_counted_and_its_last_failure_outlives_a_restart(
    pg_database: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    config_text = (
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\n'
    )
    # The verify job names a backup that does not exist, so every run fails; the backups succeed.
    failing = 'action = "verify"\ntarget = "app"\ninterval = "2s"\n[args]\nselector = "20990101T000000Z"\n'
    jobs = {"nightly-verify": failing, "hourly": 'action = "backup"\ntarget = "app"\ninterval = "2s"\n'}
    daemon = start_daemon(config_text, jobs)

    def failed_twice() -> str | None:
        body = get(daemon.url + "/metrics")[1]
        failures = metric(body, "opskit_job_runs_total", job_name="nightly-verify", action="verify", result="failure")
        successes = metric(body, "opskit_job_runs_total", job_name="hourly", action="backup", result="success")
        return body if failures and failures >= 2 and successes else None

    body = wait_for(failed_twice, 40, "two failed verify runs in /metrics", daemon)
    assert daemon.terminate() == 0, daemon.log()[-3000:]

    assert metric(body, "opskit_job_runs_total", job_name="nightly-verify", action="verify", result="success") == 0
    assert metric(body, "opskit_job_runs_total", job_name="hourly", action="backup", result="failure") == 0
    assert metric(body, "opskit_job_skipped_total", job_name="nightly-verify") is not None  # exported from the start
    last_failure = metric(body, "opskit_job_last_failure_timestamp_seconds", job_name="nightly-verify")
    assert last_failure is not None and abs(time.time() - last_failure) < 60
    assert metric(body, "opskit_job_last_success_timestamp_seconds", job_name="nightly-verify") is None
    assert metric(body, "opskit_job_last_success_timestamp_seconds", job_name="hourly") is not None
    if PROMTOOL is not None:
        linted = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True)
        assert linted.returncode == 0, linted.stdout + linted.stderr

    # Restarted with the verify job on a schedule that is not due: it does not run, and its
    # failure is still what /metrics says (read from the ledger), so the alert keeps firing.
    quiet = 'action = "verify"\ntarget = "app"\ncron = "0 0 1 1 *"\nmisfire_grace_time = "1s"\n'
    restarted = start_daemon(config_text, {"nightly-verify": quiet}, name="restarted")
    after = wait_for(
        lambda: (text := get(restarted.url + "/metrics")[1]) and "opskit_job_runs_total" in text and text,
        30,
        "the restarted daemon's /metrics",
        restarted,
    )
    assert restarted.terminate() == 0, restarted.log()[-3000:]
    newest = max(run["finished_at"] for run in Ledger(pg_database).runs("nightly-verify"))
    assert metric(after, "opskit_job_last_failure_timestamp_seconds", job_name="nightly-verify") == pytest.approx(
        newest.timestamp()
    )
    assert metric(after, "opskit_job_runs_total", job_name="nightly-verify", action="verify", result="failure") == 0
    assert metric(after, "opskit_job_last_success_timestamp_seconds", job_name="hourly") is None  # not a job any more
    assert not any(e["event"] == "job started" for e in restarted.events())
