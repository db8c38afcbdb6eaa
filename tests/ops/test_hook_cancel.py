"""A command hook never outlives its run: cancel or timeout stops its whole process group."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from opskit.context import AppContext
from opskit.core.errors import BackupFailed, Cancelled
from opskit.ops.hooks import run_hooks
from tests.ops.test_hooks import ENV, context


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): only a reaped or running process counts.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def shell_hook(tmp_path: Path, extra: str = "") -> tuple[AppContext, Path]:
    # The shell's background sleep is a grandchild: killing the shell alone would orphan it.
    pid_file = tmp_path / "sleep.pid"
    hook = f'[[hooks.before]]\ncommand = ["/bin/sh", "-c", "sleep 41 & echo $! > {pid_file}; wait"]\n{extra}'
    return context(hook), pid_file


def test_a_cancelled_run_stops_its_hooks_whole_process_group_and_raises_cancelled(tmp_path: Path) -> None:
    ctx, pid_file = shell_hook(tmp_path, 'on_failure = "warn"\n')
    threading.Timer(1.0, ctx.cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled) as caught:
        run_hooks(ctx, ctx.config.hooks, "before", "backup", ENV)
    assert time.monotonic() - started < 8
    assert caught.value.message == "before hook hooks.before[0] was stopped: the run was cancelled (shutdown requested)"
    assert caught.value.exit_code == 4
    assert not alive(int(pid_file.read_text()))


def test_a_hook_past_its_timeout_leaves_no_process_of_its_own_behind(tmp_path: Path) -> None:
    ctx, pid_file = shell_hook(tmp_path, 'timeout = "1s"\n')
    with pytest.raises(BackupFailed, match="did not finish within 1 s"):
        run_hooks(ctx, ctx.config.hooks, "before", "backup", ENV)
    assert not alive(int(pid_file.read_text()))
