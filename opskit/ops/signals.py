"""The signals of one run, the same from the daemon and the command line: hooks, pings, webhooks, a run record.

:func:`observed` wraps one call of an action (``opskit.actions.call`` is its one caller, used by
the daemon's runner and by every CLI verb the daemon can schedule), so a CronJob running
``opskit backup now`` tells healthchecks.io, the webhooks and the metrics exactly what a daemon
job would. Around the call, in order:

1. the ``start`` ping/notification, then the ``[hooks] before`` hooks (a failing ``fail`` hook
   skips the action: the run fails with the hook's error);
2. the action; its result's ``raise_for_outcome()`` decides a run that returned but did not
   succeed (a failed copy, a failed drill check, a breached objective);
3. on success the ``after`` hooks (a failing ``fail`` hook fails the run), on failure the
   ``on_error`` hooks, with ``OPSKIT_EXIT_CODE`` and ``OPSKIT_ERROR`` set;
4. a run record in the target's primary storage (``catalog.runs``: what ``opskit metrics
   --textfile`` counts), then the final ping/notification with the exit code.

Signals never change the result: a dead receiver or an unwritable run record is a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import structlog

from opskit.catalog.runs import RunRecord, write_run
from opskit.context import AppContext
from opskit.core.errors import Cancelled, ConfigError, OpskitError
from opskit.core.log import get_logger
from opskit.ops import hooks as hooks_mod
from opskit.ops.notify import ABORTED, FAILURE, START, SUCCESS, Event, notify

log = get_logger(__name__)

T = TypeVar("T")
INTERRUPTED = 130
_RECORD_RESULTS = {SUCCESS: "success", FAILURE: "failure", ABORTED: "aborted"}


def observed(
    ctx: AppContext,
    verb: str,
    call: Callable[[], T],
    *,
    target: str | None = None,
    job: str | None = None,
    slot: str | None = None,
    raise_outcome: bool = False,
) -> T:
    """Run ``call()`` as one run of ``verb`` with every signal of the module docstring; return its result.

    Raises what the call (or a ``fail`` hook) raised. A result whose ``raise_for_outcome()``
    raises is returned as it is (the CLI renders it, then exits with its code) unless
    ``raise_outcome`` is set (the daemon), which raises that error after the signals went out.
    """
    if ctx.dry_run:
        return call()  # a rehearsal is no run: no hook, ping or record would tell the truth about it
    target_name = _target_name(ctx, target)
    env = {"OPSKIT_VERB": verb, "OPSKIT_TARGET": target_name or "", "OPSKIT_JOB": job or ""}
    settings = ctx.config.notify
    started_at, started = ctx.clock(), time.monotonic()
    with structlog.contextvars.bound_contextvars(verb=verb):
        notify(Event(START, job or "", verb, target_name, slot), settings, ctx.cancel)
        result: Any = None
        outcome_error: OpskitError | None = None
        try:
            if ctx.cancel.is_set():
                # Cancelled while the start signal was sent (a slow receiver): nothing starts.
                raise Cancelled("the run was cancelled (shutdown requested) before it started; nothing was done")
            hooks_mod.run_hooks(ctx, ctx.config.hooks, "before", verb, env)
            result = call()
            details = details_of(result)
            env["OPSKIT_BACKUP_ID"] = str(details.get("backup_id") or "")
            outcome_error = _outcome_error(result)
            if outcome_error is None:
                hooks_mod.run_hooks(ctx, ctx.config.hooks, "after", verb, env)
        except BaseException as exc:
            kind, code = _judge(ctx, exc)
            _finish(ctx, verb, target_name, job, slot, started_at, started, kind, code, _why(exc), env, result)
            raise
        if outcome_error is not None:
            kind, code = _judge(ctx, outcome_error)
            _finish(
                ctx, verb, target_name, job, slot, started_at, started, kind, code, _why(outcome_error), env, result
            )
            if raise_outcome:
                raise outcome_error
            return result
        _finish(ctx, verb, target_name, job, slot, started_at, started, SUCCESS, 0, None, env, result)
        return result


def details_of(result: Any) -> dict[str, Any]:
    """Return loggable facts of an action's result (a backup's id and size); empty for other results."""
    manifest = getattr(result, "manifest", None)
    if manifest is not None:
        details: dict[str, Any] = {"backup_id": getattr(manifest, "id", None)}
        size = getattr(manifest, "size", None)
        if isinstance(size, int):
            details["size"] = size
        return details
    return {}


def _target_name(ctx: AppContext, target: str | None) -> str | None:
    # The run's target for signals: the named one, or the only one; None when the action covers
    # several (copy, prune --all) or the name is wrong (the action reports that itself).
    try:
        return ctx.config.target(target).name
    except ConfigError:
        return None


def _outcome_error(result: Any) -> OpskitError | None:
    raise_for_outcome = getattr(result, "raise_for_outcome", None)
    if not callable(raise_for_outcome):
        return None
    try:
        raise_for_outcome()
    except OpskitError as exc:
        return exc
    return None


def _judge(ctx: AppContext, exc: BaseException) -> tuple[str, int]:
    """Return (event kind, exit code) for a run that ended with ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return ABORTED, INTERRUPTED
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        return (SUCCESS if code == 0 else FAILURE), code
    code = exc.exit_code if isinstance(exc, OpskitError) else 1
    return (ABORTED if ctx.cancel.is_set() else FAILURE), code


def _why(exc: BaseException) -> str:
    if isinstance(exc, OpskitError):
        return exc.one_line()
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"unexpected error: {type(exc).__name__}: {exc}"


def _finish(
    ctx: AppContext,
    verb: str,
    target: str | None,
    job: str | None,
    slot: str | None,
    started_at: datetime,
    started: float,
    kind: str,
    exit_code: int,
    error: str | None,
    env: dict[str, str],
    result: Any,
) -> None:
    """Run the on_error hooks (for a failed run), store the run record, send the final signals. Never raises."""
    details = details_of(result)
    duration = round(time.monotonic() - started, 3)
    if kind != SUCCESS:
        env = {**env, "OPSKIT_EXIT_CODE": str(exit_code), "OPSKIT_ERROR": error or ""}
        try:
            hooks_mod.run_hooks(ctx, ctx.config.hooks, "on_error", verb, env)
        except Exception as exc:  # on_error hooks never raise; a bug here must not hide the run's error
            log.warning("on_error hooks failed unexpectedly", error=f"{type(exc).__name__}: {exc}")
    if target is not None:
        _record(
            ctx,
            RunRecord(
                target=target,
                verb=verb,
                result=_RECORD_RESULTS[kind],
                started_at=started_at,
                finished_at=ctx.clock(),
                exit_code=exit_code,
                job=job,
                error=error,
                backup_id=details.get("backup_id"),
            ),
        )
    notify(
        Event(kind, job or "", verb, target, slot, duration, error, details, exit_code=exit_code),
        ctx.config.notify,
        ctx.cancel,
    )


def _record(ctx: AppContext, record: RunRecord) -> None:
    try:
        storage = ctx.storage(ctx.config.target(record.target).primary_storage)
        write_run(storage, record)
    except Exception as exc:  # a record is a signal too: it must not change the run's result
        message = exc.one_line() if isinstance(exc, OpskitError) else f"{type(exc).__name__}: {exc}"
        log.warning("run record not stored", target=record.target, verb=record.verb, error=message)
