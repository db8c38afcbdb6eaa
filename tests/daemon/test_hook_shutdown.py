"""Daemon shutdown stops a hook that is still running: no orphan, and the daemon leaves within its grace."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.daemon.ledger import ABORTED, Ledger
from tests.daemon.test_process import Daemon, start_daemon, wait_for  # noqa: F401 - start_daemon is a fixture
from tests.ops.test_hook_cancel import alive

pytestmark = pytest.mark.timeout(120)


def test_sigterm_while_a_before_hook_sleeps_kills_the_hook_and_exits_within_the_grace(
    pg_database: str,
    tmp_path: Path,
    start_daemon: Callable[..., Daemon],  # noqa: F811 - the fixture imported above
) -> None:
    pid_file = tmp_path / "sleep.pid"
    config = (
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\nstorages = ["local"]\n'
        '[daemon]\nshutdown_grace = "2s"\n'
        f'[[hooks.before]]\nverbs = ["backup"]\ncommand = ["/bin/sh", "-c", "sleep 41 & echo $! > {pid_file}; wait"]\n'
    )
    daemon = start_daemon(config, {"hourly": 'action = "backup"\ntarget = "app"\ninterval = "1h"\n'})
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "the hook to start", daemon)
    sleeper = int(pid_file.read_text())

    stopped_at = time.monotonic()
    code = daemon.terminate()
    took = time.monotonic() - stopped_at

    assert code == 0, daemon.log()[-3000:]
    assert took < 2 + 8, f"took {took:.1f}s to stop"
    assert not alive(sleeper)
    assert [run["result"] for run in Ledger(pg_database).runs("hourly")] == [ABORTED]
