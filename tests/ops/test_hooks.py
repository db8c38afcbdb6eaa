"""Running hooks: the run's context in the environment, a timeout, and fail or warn as configured."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from opskit.config.load import parse_config
from opskit.context import AppContext
from opskit.core.errors import BackupFailed
from opskit.ops.hooks import run_hooks

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'
ENV = {"OPSKIT_VERB": "backup", "OPSKIT_TARGET": "app", "OPSKIT_JOB": ""}


def context(hooks: str) -> AppContext:
    return AppContext(config=parse_config(BASE + hooks))


def test_a_hook_that_outlives_its_timeout_fails_the_run_in_about_that_time() -> None:
    ctx = context('[[hooks.before]]\ncommand = ["sleep", "30"]\ntimeout = "1s"\n')
    started = time.monotonic()
    with pytest.raises(BackupFailed) as caught:
        run_hooks(ctx, ctx.config.hooks, "before", "backup", ENV)
    assert time.monotonic() - started < 10
    assert caught.value.message == "before hook hooks.before[0] failed: sleep did not finish within 1 s"
    assert caught.value.exit_code == 4


def test_a_warn_hook_failure_is_returned_and_the_next_hook_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ctx = context(
        '[hooks]\non_failure = "warn"\n'
        '[[hooks.after]]\ncommand = ["false"]\n'
        f'[[hooks.after]]\ncommand = ["sh", "-c", "echo $OPSKIT_HOOK $OPSKIT_TARGET > {out}"]\n'
    )
    warnings = run_hooks(ctx, ctx.config.hooks, "after", "backup", ENV)
    assert warnings == ["after hook hooks.after[0] failed: false exited with 1"]
    assert out.read_text() == "after app\n"


def test_on_error_hooks_never_raise_and_hooks_of_other_verbs_do_not_run(tmp_path: Path) -> None:
    ctx = context('[[hooks.on_error]]\ncommand = ["false"]\n[[hooks.before]]\nverbs = ["prune"]\ncommand = ["false"]\n')
    assert run_hooks(ctx, ctx.config.hooks, "on_error", "backup", ENV) == [
        "on_error hook hooks.on_error[0] failed: false exited with 1"
    ]
    assert run_hooks(ctx, ctx.config.hooks, "before", "backup", ENV) == []
    with pytest.raises(BackupFailed):
        run_hooks(ctx, ctx.config.hooks, "before", "prune", ENV)


def test_a_missing_program_is_a_failed_hook_naming_it() -> None:
    ctx = context('[[hooks.before]]\ncommand = ["/nonexistent/freeze"]\n')
    with pytest.raises(BackupFailed, match="cannot start /nonexistent/freeze"):
        run_hooks(ctx, ctx.config.hooks, "before", "backup", ENV)
