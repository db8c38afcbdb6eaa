"""SIGTERM while a notification receiver hangs: the daemon still stops cleanly in its grace period.

A ping URL that accepts connections and never answers used to hold the run in its start ping
(3 attempts of 10 s) past the grace period and the 20 s abort wait: the daemon exited 1 and left
the run's ledger row ``running``. Now the in-flight request is abandoned at the cancel, the run
does not start, the final signal gets one short attempt, and the ledger says ``aborted``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.daemon.ledger import ABORTED, Ledger
from tests.daemon.test_process import Daemon, start_daemon, wait_for  # noqa: F401 (start_daemon is a fixture)
from tests.ops.test_notify_cancel import silent_url  # noqa: F401 (a fixture: a receiver that never answers)

pytestmark = pytest.mark.timeout(120)


def test_sigterm_while_the_start_ping_hangs_exits_0_in_the_grace_and_records_the_run_aborted(
    pg_database: str,
    tmp_path: Path,
    silent_url: tuple[str, list[object]],  # noqa: F811 - the fixture imported above
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    backups = tmp_path / "backups"
    config = (
        f'[storages.local]\nurl = "file://{backups}"\n'
        f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\n'
        '[daemon]\nshutdown_grace = "1s"\n'
        # The defaults: three attempts of 10 s each, which outlast grace + abort wait (21 s).
        f'[notify]\npings = ["{silent_url[0]}"]\ntimeout = "10s"\nattempts = 3\n'
    )
    # An hourly interval: the current slot is caught up at start, and nothing else runs.
    daemon = start_daemon(config, {"hourly": 'action = "backup"\ntarget = "app"\ninterval = "1h"\n'})
    wait_for(lambda: any(e["event"] == "job started" for e in daemon.events()), 30, "job start", daemon)
    time.sleep(0.5)  # the start ping is now waiting on the silent receiver

    stopped_at = time.monotonic()
    code = daemon.terminate(timeout=60)
    took = time.monotonic() - stopped_at

    assert code == 0, daemon.log()[-3000:]
    # Grace (1 s) + one final attempt of at most 5 s, not the 20 s abort wait.
    assert took < 12, f"took {took:.1f}s to stop"
    runs = Ledger(pg_database).runs("hourly")
    assert [run["result"] for run in runs] == [ABORTED]
    assert runs[0]["error"] == "the run was cancelled (shutdown requested) before it started; nothing was done"
    # The backup never started, so nothing of it is anywhere: no backup folder, only the run record.
    assert not any(e["event"] == "backup started" for e in daemon.events())
    assert sorted(p.name for p in (backups / "app").iterdir()) == ["runs"]
    assert any(e["event"] == "notification abandoned: the run was cancelled" for e in daemon.events())
