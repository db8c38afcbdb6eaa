"""A runbook's shell step never outlives its run: the daemon's shutdown stops its whole process group."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from opskit.runbooks import runbook
from tests.ops.test_hook_cancel import alive
from tests.ops.test_hooks import context


def test_a_cancelled_runbook_stops_its_shell_steps_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"  # the background sleep is a grandchild; $$ is the runbook escape for $
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "waits.toml").write_text(
        'title = "waits"\n[[steps]]\nkind = "shell"\n'
        f'argv = ["/bin/sh", "-c", "sleep 41 & echo $$! > {pid_file}; wait"]\n'
    )
    ctx = context("")
    threading.Timer(1.0, ctx.cancel.set).start()
    started = time.monotonic()

    result = runbook.run(ctx, "waits", yes=True, directory=tmp_path / "books", transcript_dir=tmp_path)

    assert time.monotonic() - started < 8
    assert not result.ok
    assert "the run was cancelled" in (result.results[0].error or "")
    assert not alive(int(pid_file.read_text()))
