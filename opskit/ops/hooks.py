"""Running the ``[hooks]`` of a run: commands through ``core.execute``, SQL on the target's database.

:func:`run_hooks` runs the hooks of one moment (before, after, on_error) for one verb, in file
order. A hook fails when its command exits non-zero, cannot start, outlives its timeout, or its
SQL raises. What a failure means is the hook's ``on_failure``: ``fail`` raises
:class:`~opskit.core.errors.BackupFailed` (exit 4, "the run failed") naming the hook and its
last line of output, ``warn`` logs a warning and the run goes on. An ``on_error`` hook never
raises: the run has already failed, and its own error is the one the operator must see.
A command hook runs in a process group of its own: at its timeout, or when the run is
cancelled (daemon shutdown: :class:`~opskit.core.errors.Cancelled`), the whole group is
stopped, so no process of the hook outlives the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from opskit.config.hooks import Hook, HookSettings
from opskit.core import execute
from opskit.core.errors import BackupFailed, Cancelled, OpskitError
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text

if TYPE_CHECKING:
    from opskit.context import AppContext

log = get_logger(__name__)


def run_hooks(
    ctx: AppContext, settings: HookSettings | None, when: str, verb: str, env: Mapping[str, str]
) -> list[str]:
    """Run every hook of ``when`` for ``verb`` with the run's context ``env``; return the warnings.

    Raises BackupFailed for a failed hook whose ``on_failure`` is ``fail`` (never for ``on_error``
    hooks), Cancelled when the run was cancelled while a hook ran; the hooks after it do not run.
    """
    if settings is None:
        return []
    warnings: list[str] = []
    for hook in settings.for_run(when, verb):
        try:
            problem = _run_one(ctx, hook, {**env, "OPSKIT_HOOK": when})
        except Cancelled as exc:
            # The daemon is shutting down: the hook's processes were stopped, and no hook after
            # it starts. Never a "failed hook" a warn setting could let the run go on after.
            if when == "on_error":
                log.warning("on_error hook stopped: the run was cancelled", hook=hook.name, verb=verb)
                return warnings
            raise Cancelled(f"{when} hook {hook.name} was stopped: the run was cancelled (shutdown requested)") from exc
        if problem is None:
            log.info("hook ran", hook=hook.name, verb=verb)
            continue
        message = f"{when} hook {hook.name} failed: {problem}"
        if hook.on_failure == "fail" and when != "on_error":
            raise BackupFailed(message, hint=f'fix the hook, or set on_failure = "warn" at {hook.name}')
        log.warning("hook failed", hook=hook.name, verb=verb, error=problem)
        warnings.append(message)
    return warnings


def _run_one(ctx: AppContext, hook: Hook, env: Mapping[str, str]) -> str | None:
    """Run one hook; return None when it succeeded, else why it failed (one line)."""
    try:
        if hook.command:
            return _run_command(ctx, hook, env)
        return _run_sql(ctx, hook, env)
    except Cancelled:
        raise
    except OpskitError as exc:
        return exc.one_line()


def _run_command(ctx: AppContext, hook: Hook, env: Mapping[str, str]) -> str | None:
    """Run a command hook; its process group is stopped at its timeout or when ``ctx.cancel`` is set (Cancelled)."""
    result = execute.run(hook.command, env=env, timeout=hook.timeout.total_seconds(), cancel=ctx.cancel)
    if result.returncode == 0:
        return None
    output = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()
    last = f": {redact_text(output[-1])}" if output else ""
    return f"{hook.command[0]} exited with {result.returncode}{last}"


def _run_sql(ctx: AppContext, hook: Hook, env: Mapping[str, str]) -> str | None:
    # Imported here: a config with only command hooks never loads the PostgreSQL driver for them.
    import psycopg

    from opskit.pg.connection import connect

    target = ctx.target(hook.target or env.get("OPSKIT_TARGET") or None)
    milliseconds = int(hook.timeout.total_seconds() * 1000)
    with connect(target, autocommit=True, application_name="opskit hook") as conn:
        try:
            conn.execute(f"SET statement_timeout = {milliseconds}")
            conn.execute(hook.sql or "")  # the operator's own script
        except psycopg.Error as exc:
            return redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return None
