"""Executable runbooks: ``runbooks/*.toml``, ordered steps run one by one, stopping at the first failure.

A runbook::

    title = "Quarterly restore drill"
    description = "Why and when to run it."

    [vars]                                   # ${name} in any string of a step; --var name=value overrides
    target = "app"                           # a default
    before = { help = "incident time (UTC ISO 8601)", required = true }

    [[steps]]
    kind = "opskit"                          # the CLI, as `python -m opskit --config <same file> ...`
    name = "Drill the newest backup"
    command = ["drill", "restore", "--target", "${target}"]
    allow_exit = [0, 6]                      # exit codes that count as success (default [0])

    [[steps]]
    kind = "opskit"                          # or an in-process action with keyword arguments
    action = "restore-globals"
    args = { target = "${target}", to = "${new_server}" }

    [[steps]]
    kind = "sql"                             # a query on a configured target (optionally another database)
    target = "${target}"
    database = "postgres"
    query = "SELECT count(*) = 0 FROM pg_index WHERE NOT indisvalid"
    expect = true                            # compared with the first column of the first row (optional)
    capture = "invalid"                      # store that value as ${invalid} for later steps (optional)

    [[steps]]
    kind = "shell"                           # argv, never a shell
    argv = ["pg_isready", "-h", "127.0.0.1"]

    [[steps]]
    kind = "confirm"                         # a yes/no question; --yes answers yes
    prompt = "Cut over now?"

    [[steps]]
    kind = "note"                            # text for the operator, shown and kept in the transcript
    text = "..."
    when = ["wal", "covers", "${before}"]    # any step: run only if this opskit command exits 0
                                             # (unless = [...]: only if it exits 1); else skipped

Variables ``now``, ``run_id`` and ``config`` are always defined. Every run writes a Markdown
transcript (each step, its output and its timing) to ``<state_dir>/runbooks/``.

This module is the ``runbook`` action (:func:`run`); the pieces are beside it: ``model``
(the records), ``loader`` (finding and parsing files), ``variables``, ``steps`` (the step
kinds: their keys, checks and runs), ``transcript``, and the in-process step actions'
``summaries``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from opskit import catalog
from opskit.context import AppContext
from opskit.core.errors import OpskitError
from opskit.core.log import get_logger
from opskit.runbooks.loader import find
from opskit.runbooks.model import FAILED, Confirm, Echo, RunbookResult, StepResult
from opskit.runbooks.steps import StepRun, run_step
from opskit.runbooks.transcript import write_transcript
from opskit.runbooks.variables import resolve_variables, substitute

log = get_logger(__name__)

INTERRUPTED = 130  # the exit code of an interrupted run (docs/cli.md)


def run(
    ctx: AppContext,
    name: str,
    variables: Mapping[str, str] | None = None,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Confirm | None = None,
    echo: Echo | None = None,
    directory: str | Path | None = None,
    transcript_dir: str | Path | None = None,
    target: str | None = None,
) -> RunbookResult:
    """Run the runbook ``name`` step by step, stopping at the first failure; write the transcript.

    ``target`` (as the daemon passes it) fills the runbook's ``target`` variable unless
    ``variables`` set it. ``confirm`` asks a person (None: a confirm step fails unless
    ``yes``). ``echo`` receives progress lines as they happen. Returns the RunbookResult
    (its ``raise_for_outcome()`` raises RunbookFailed). Raises ConfigError for an unknown
    runbook or variable; a failing step is recorded in the result (``exit_code``), not raised.
    An interrupt (KeyboardInterrupt) is re-raised after the transcript is written, with the
    step it stopped recorded as failed ("interrupted", exit 130) and :func:`interrupted_note`
    added to it as a note (the line the CLI prints).
    """
    runbook = find(ctx, name, directory)
    started_at = ctx.clock()
    run_id = catalog.new_backup_id(started_at)
    given = dict(variables or {})
    if target is not None and any(v.name == "target" for v in runbook.variables):
        given.setdefault("target", target)
    values = resolve_variables(ctx, runbook, given, run_id)
    result = RunbookResult(runbook, values, dry_run, started=catalog.format_time(started_at))
    step_run = StepRun(ctx, values, yes, confirm)
    say = echo or (lambda _line: None)
    say(f"runbook {runbook.name}: {runbook.title}" + (" (dry run)" if dry_run else ""))
    origin = time.monotonic()
    for step in runbook.steps:
        say(f"[{step.index}/{len(runbook.steps)}] {step.kind}: {step.name}")
        begin = time.monotonic()
        try:
            rendered = substitute(dict(step.fields), values, strict=not dry_run)
            outcome = run_step(step_run, step, rendered, dry_run)
        except OpskitError as exc:
            outcome = StepResult(step, FAILED, error=exc.one_line(), exit_code=exc.exit_code)
        except KeyboardInterrupt as interrupt:
            # Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt) during a step, often one
            # that hangs: what the earlier steps did (a restore, a cut-over) must still be on
            # record, so the transcript is written, naming the step, before the interrupt goes up.
            outcome = StepResult(step, FAILED, error="interrupted (SIGINT or SIGTERM)", exit_code=INTERRUPTED)
            outcome.seconds = time.monotonic() - begin
            result.results.append(outcome)
            result.seconds = time.monotonic() - origin
            result.transcript = write_transcript(ctx, result, transcript_dir)
            say(f"    -> interrupted ({outcome.seconds:.1f} s)")
            say(f"transcript: {result.transcript}")
            log.warning("runbook interrupted", runbook=runbook.name, step=step.index, transcript=str(result.transcript))
            # The CLI's interrupt line reads this note: "nothing was committed" would be false
            # here, where earlier steps may have restored, backed up or cut over.
            interrupt.add_note(interrupted_note(result))
            raise
        outcome.seconds = time.monotonic() - begin
        result.results.append(outcome)
        if outcome.output:
            for line in outcome.output.splitlines():
                say(f"    {line}")
        say(f"    -> {outcome.status} ({outcome.seconds:.1f} s)" + (f": {outcome.error}" if outcome.error else ""))
        if outcome.status == FAILED:
            break
    result.seconds = time.monotonic() - origin
    result.transcript = write_transcript(ctx, result, transcript_dir)
    log.info(
        "runbook finished",
        runbook=runbook.name,
        ok=result.ok,
        steps=len(result.results),
        duration_seconds=round(result.seconds, 2),
        transcript=str(result.transcript),
    )
    return result


def interrupted_note(result: RunbookResult) -> str:
    """Return what an interrupted run leaves behind, for the CLI's interrupt line: the step, what stays, the transcript.

    ``result`` holds the steps attempted, the interrupted one last. A step of a runbook is not
    undone when a later one is stopped, so the line must not say that nothing was committed.
    """
    stopped = result.results[-1].step
    total = len(result.runbook.steps)
    where = f"runbook '{result.runbook.name}' stopped at step {stopped.index} of {total} ({stopped.name})"
    if result.dry_run:
        where += "; a dry run, so no step changed anything"
    elif stopped.index == 1:
        where += ", before any other step ran"
    else:
        earlier = "step 1" if stopped.index == 2 else f"steps 1-{stopped.index - 1}"
        where += f"; what {earlier} did stays done (nothing is undone)"
    return f"{where}; transcript: {result.transcript}"
