"""The kinds of runbook step: one :class:`StepKind` each (its keys, its checks, how it reads, how it runs).

:data:`KINDS` is the registry the loader validates against and the runner dispatches on, so
a new kind is one entry here. The kinds:

- ``opskit``: the CLI as a child process (``command``), or an in-process action from
  :mod:`opskit.actions` (``action`` + ``args``) whose result the action table renders;
- ``sql``: a query on a configured target; ``expect`` checks, ``capture`` stores a variable;
- ``shell``: an argv, never a shell;
- ``confirm``: a yes/no question (``--yes`` answers yes: the step is ok, "confirmed by --yes");
- ``note``: text for the operator (shown in a dry run too).

Every kind also takes ``when`` or ``unless``: an opskit command line (argv after
``opskit``) that decides whether the step runs. Exit 0 means "yes" and exit 1 "no" (as
``opskit wal covers`` answers); ``when`` runs the step on yes, ``unless`` on no, and a
step that does not run is recorded as skipped. Any other exit fails the step: a question
that could not be answered must not choose a path. The condition runs in dry runs too, so
it must be a command that changes nothing.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from opskit import actions
from opskit.config.schema import Section
from opskit.context import AppContext
from opskit.core.errors import ConfigError, VerificationFailed
from opskit.core.execute import run as run_command
from opskit.core.redaction import redact_text
from opskit.core.units import parse_duration
from opskit.pg import connection
from opskit.runbooks.model import DRY_RUN, FAILED, OK, SKIPPED, Confirm, Step, StepResult

DEFAULT_TIMEOUT = timedelta(hours=4)
OUTPUT_LINES = 200  # lines of a step's output kept in the transcript

Rendered = Mapping[str, Any]  # a step's fields with its variables filled in


@dataclass(frozen=True)
class StepRun:
    """What a running step may use: the app, the run's variables (a ``capture`` adds one), the operator's answers."""

    ctx: AppContext
    variables: dict[str, str]
    yes: bool
    confirm: Confirm | None


def _no_check(section: Section, fields: Mapping[str, Any]) -> None:
    """A kind whose keys need no check beyond the shared ones."""


@dataclass(frozen=True)
class StepKind:
    """One kind of step.

    ``describe(rendered, prefix)`` returns what the step does ("would run: ...") or "" when
    there is nothing to say; ``default_name(fields)`` its name when it has none ("" when the
    fields are too malformed to name it: the kind's name is used); ``run`` returns its
    StepResult and may raise OpskitError (the runner records it as a failure); ``check`` adds
    kind-specific problems to the section.
    """

    name: str
    keys: frozenset[str]
    required: tuple[str, ...]
    describe: Callable[[Rendered, str], str]
    run: Callable[[StepRun, Step, Rendered], StepResult]
    check: Callable[[Section, Mapping[str, Any]], None] = _no_check
    default_name: Callable[[Mapping[str, Any]], str] | None = None
    runs_in_dry_run: bool = False


# --------------------------------------------------------------------------- opskit


def _check_opskit(section: Section, fields: Mapping[str, Any]) -> None:
    if ("command" in fields) == ("action" in fields):
        section.errors.add(section.path, "an 'opskit' step needs exactly one of 'command' (CLI argv) or 'action'")
    allowed = actions.step_actions()
    action = fields.get("action")
    if "action" in fields and action not in allowed:
        section.errors.add(section.key_path("action"), f"must be one of {', '.join(sorted(allowed))}")
    if "args" in fields and "action" not in fields:
        section.errors.add(section.key_path("args"), "is for an 'action' step; a 'command' step takes its argv")
    elif isinstance(action, str) and action in allowed and isinstance(fields.get("args"), Mapping):
        _check_action_args(section, action, fields["args"])


def _check_action_args(section: Section, action: str, args: Mapping[str, Any]) -> None:
    """Record every ``args`` key that action ``action``'s function does not take (it would fail when the step runs).

    Only the names are checked: a value may be a ``${variable}``, whose type is known only then.
    """
    row = actions.spec(action)
    try:
        parameters = inspect.signature(actions.resolve(action)).parameters.values()
    except ConfigError as exc:  # its module is not part of this build
        section.errors.add(section.key_path("action"), exc.one_line())
        return
    except (TypeError, ValueError):
        return  # a callable whose signature cannot be read: the call itself will say
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    taken = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"ctx"}
    # A step may write an argument under the name the step format gave it (step_args).
    known = sorted(
        {key for key, name in row.step_args.items() if name in taken} | (taken - set(row.step_args.values()))
    )
    for key in args:
        if row.step_args.get(key, key) not in taken:
            section.errors.add(
                section.key_path(f"args.{key}"),
                f"action '{action}' takes no argument '{key}' (its arguments: {', '.join(known) or 'none'})",
            )


def _describe_opskit(rendered: Rendered, prefix: str) -> str:
    if "command" in rendered:
        return f"{prefix}run: opskit " + " ".join(rendered["command"])
    return f"{prefix}call action {rendered['action']} with {dict(rendered.get('args') or {})}"


def _run_opskit(run: StepRun, step: Step, rendered: Rendered) -> StepResult:
    if "action" in rendered:
        return _action_step(run.ctx, step, rendered)
    argv = [sys.executable, "-m", "opskit"]
    if run.ctx.config.source is not None:
        argv += ["--config", str(run.ctx.config.source)]
    argv += list(rendered["command"])
    allowed = [int(code) for code in rendered.get("allow_exit", [0])]
    # The child is opskit itself, reading the same config: it must resolve the same secrets
    # (env: references such as APP_DB_PASSWORD, OPSKIT_*) that execute.child_env() strips for
    # other programs, so it gets this process's whole environment back.
    env = dict(os.environ)
    return _process_step(run, step, rendered, argv, allowed, env, opskit_child=True)


def _action_step(ctx: AppContext, step: Step, rendered: Rendered) -> StepResult:
    """Call an action of the table in-process; its row renders the result as the step's output."""
    name = str(rendered["action"])
    row = actions.spec(name)
    call = actions.resolve(name)
    summarize = actions.resolve_step_summary(name)
    args = {row.step_args.get(key, key): value for key, value in dict(rendered.get("args") or {}).items()}
    try:
        output = summarize(call(ctx, **args))
    except TypeError as exc:
        raise ConfigError(f"step {step.index} passes arguments action '{name}' does not take: {exc}") from exc
    return StepResult(step, OK, output=output, rendered=rendered)


def _opskit_name(fields: Mapping[str, Any]) -> str:
    action = fields.get("action")
    what = " ".join(_strings(fields.get("command"))) or (action if isinstance(action, str) else "")
    return f"opskit {what}" if what else ""


# --------------------------------------------------------------------------- shell (and the opskit child)


def _describe_shell(rendered: Rendered, prefix: str) -> str:
    return f"{prefix}run: " + " ".join(rendered["argv"])


def _run_shell(run: StepRun, step: Step, rendered: Rendered) -> StepResult:
    return _process_step(run, step, rendered, list(rendered["argv"]), [int(rendered.get("expect_exit", 0))], None)


def _process_step(
    run: StepRun,
    step: Step,
    rendered: Rendered,
    argv: list[str],
    allowed: Sequence[int],
    env: Mapping[str, str] | None,
    opskit_child: bool = False,
) -> StepResult:
    """Run ``argv``; ok when its exit code is in ``allowed``. Keeps the last lines of its output, redacted.

    An opskit child's JSON log lines (its stderr) stay out of the output: its results and its
    one error line are what the runbook shows. The daemon's shutdown (``ctx.cancel``) stops the
    child's whole process group, as it stops a hook's.
    """
    timeout = parse_duration(str(rendered["timeout"])) if "timeout" in rendered else DEFAULT_TIMEOUT
    completed = run_command(argv, env=env, timeout=timeout.total_seconds(), cancel=run.ctx.cancel)
    stderr = completed.stderr.decode("utf-8", "replace")
    if opskit_child:
        stderr = "".join(line for line in stderr.splitlines(keepends=True) if not _is_log_line(line))
    text = completed.stdout.decode("utf-8", "replace") + stderr
    output = "\n".join(redact_text(text).splitlines()[-OUTPUT_LINES:])
    if completed.returncode in allowed:
        note = "" if completed.returncode == 0 else f" (exit {completed.returncode}, allowed)"
        return StepResult(step, OK, output=output + note, exit_code=completed.returncode, rendered=rendered)
    return StepResult(
        step,
        FAILED,
        output=output,
        error=f"exit {completed.returncode} (expected {list(allowed)})",
        exit_code=completed.returncode or 1,
        rendered=rendered,
    )


def _is_log_line(line: str) -> bool:
    """Return True for one of opskit's structured log lines (a JSON object with an ``event``)."""
    if not line.lstrip().startswith("{"):
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "event" in record


def _shell_name(fields: Mapping[str, Any]) -> str:
    return " ".join(_strings(fields.get("argv")))


def _strings(value: object) -> list[str]:
    """Return ``value`` when it is a list of strings, else [] (a malformed argv still names its step; load refuses it)."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return []


# --------------------------------------------------------------------------- sql


def _describe_sql(rendered: Rendered, prefix: str) -> str:
    where = rendered["target"] + (f" (database {rendered['database']})" if rendered.get("database") else "")
    return f"{prefix}run on target {where}: {' '.join(str(rendered['query']).split())}"


_VARIABLE_RE = re.compile(r"\$\{(\w+)\}")


def parameterized(query: str, variables: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Return ``query`` with each ``${name}`` turned into a bound parameter, and the parameters.

    A variable's value is never spliced into SQL text (``--var tables=...`` is data, whatever it
    holds); every other ``%`` is doubled for psycopg's placeholder syntax. Raises ConfigError for
    an undefined variable.
    """
    params: dict[str, str] = {}

    def bind(name: str) -> str:
        if name not in variables:
            raise ConfigError(f"the query uses an undefined variable ${{{name}}}", hint="define it under [vars]")
        params[name] = variables[name]
        return f"%({name})s"

    # split() with one group alternates text and variable names: escape the text, bind the names.
    pieces = _VARIABLE_RE.split(query)
    text = "".join(bind(piece) if i % 2 else piece.replace("%", "%%") for i, piece in enumerate(pieces))
    return text, params


def _check_sql(section: Section, fields: Mapping[str, Any]) -> None:
    query = fields.get("query")
    # Inside a quoted literal a bound parameter would be the text "$1": refuse it (an odd number
    # of quotes before the variable means it sits inside one).
    if isinstance(query, str) and any(query[: m.start()].count("'") % 2 for m in _VARIABLE_RE.finditer(query)):
        section.errors.add(
            section.key_path("query"),
            "a variable in a query is a bound parameter: write ${name}, not '${name}' (no quotes)",
        )


def _run_sql(run: StepRun, step: Step, rendered: Rendered) -> StepResult:
    target = run.ctx.target(str(rendered["target"]))
    database = rendered.get("database")
    query, params = parameterized(str(step.fields["query"]), run.variables)
    with connection.connect(
        target, dbname=str(database) if database else None, autocommit=True, application_name="opskit runbook"
    ) as conn:
        try:
            cur = conn.execute(query, params)  # the author's SQL as written; variables bound, never spliced
            rows = cur.fetchall() if cur.description else []
            columns = [c.name for c in cur.description] if cur.description else []
        except psycopg.Error as exc:
            return StepResult(step, FAILED, error=f"query failed: {str(exc).strip()}", rendered=rendered)
    lines = [" | ".join(columns)] if columns else []
    lines += [" | ".join("NULL" if v is None else str(v) for v in row) for row in rows[:OUTPUT_LINES]]
    output = "\n".join(lines) or "(no rows)"
    first = rows[0][0] if rows and rows[0] else None
    if "capture" in rendered:
        run.variables[str(rendered["capture"])] = "" if first is None else str(first)
    if "expect" in rendered and not _same(first, rendered["expect"]):
        return StepResult(
            step,
            FAILED,
            output=output,
            error=f"expected {rendered['expect']!r}, got {first!r}",
            exit_code=VerificationFailed.exit_code,
            rendered=rendered,
        )
    return StepResult(step, OK, output=output, rendered=rendered)


def _same(actual: object, expected: object) -> bool:
    """Return True when a query's value matches ``expect`` (booleans compare as true/false text too)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected or str(actual).lower() == str(expected).lower()
    return str(actual) == str(expected)


# --------------------------------------------------------------------------- confirm and note


def _describe_confirm(rendered: Rendered, prefix: str) -> str:
    return f"{prefix}ask: {rendered['prompt']}"


def _run_confirm(run: StepRun, step: Step, rendered: Rendered) -> StepResult:
    prompt = str(rendered["prompt"])
    if run.yes:
        # Answered, not skipped: the run went on because --yes said yes, and the record must say so.
        return StepResult(step, OK, output=f"{prompt} -> yes (confirmed by --yes)", rendered=rendered)
    if run.confirm is None:
        return StepResult(
            step,
            FAILED,
            error=f"'{prompt}' needs a person to confirm; pass --yes",
            exit_code=ConfigError.exit_code,
            rendered=rendered,
        )
    if run.confirm(prompt):
        # The operator just read the prompt; the transcript keeps it in ``rendered``.
        return StepResult(step, OK, output="-> yes", rendered=rendered)
    return StepResult(step, FAILED, error="declined", exit_code=ConfigError.exit_code, rendered=rendered)


def _describe_note(rendered: Rendered, prefix: str) -> str:
    return ""  # a note's text is its output; there is nothing to describe


def _run_note(run: StepRun, step: Step, rendered: Rendered) -> StepResult:
    return StepResult(step, OK, output=str(rendered["text"]).strip(), rendered=rendered)


# --------------------------------------------------------------------------- conditions


def _condition(run: StepRun, step: Step, rendered: Rendered) -> StepResult | None:
    """Evaluate ``when``/``unless``; return None when the step runs, else its skipped or failed result."""
    key = "when" if "when" in rendered else "unless" if "unless" in rendered else None
    if key is None:
        return None
    argv = [sys.executable, "-m", "opskit"]
    if run.ctx.config.source is not None:
        argv += ["--config", str(run.ctx.config.source)]
    argv += list(rendered[key])
    asked = _process_step(run, step, {"timeout": "10m"}, argv, [0, 1], dict(os.environ), opskit_child=True)
    question = "opskit " + " ".join(rendered[key])
    if asked.status == FAILED:
        return StepResult(
            step,
            FAILED,
            output=asked.output,
            error=f"its condition ({key}: {question}) could not be answered: exit {asked.exit_code}",
            exit_code=asked.exit_code,
            rendered=rendered,
        )
    yes = asked.exit_code == 0
    if yes == (key == "when"):
        return None
    answer = asked.output.replace(" (exit 1, allowed)", "").strip()
    return StepResult(step, SKIPPED, output=f"skipped ({key}: {question}): {answer}", rendered=rendered)


# --------------------------------------------------------------------------- the registry


KINDS: dict[str, StepKind] = {
    kind.name: kind
    for kind in (
        StepKind(
            "opskit",
            frozenset({"command", "action", "args", "allow_exit", "timeout"}),
            (),
            _describe_opskit,
            _run_opskit,
            check=_check_opskit,
            default_name=_opskit_name,
        ),
        StepKind(
            "sql",
            frozenset({"target", "database", "query", "expect", "capture"}),
            ("target", "query"),
            _describe_sql,
            _run_sql,
            check=_check_sql,
        ),
        StepKind(
            "shell",
            frozenset({"argv", "expect_exit", "timeout"}),
            ("argv",),
            _describe_shell,
            _run_shell,
            default_name=_shell_name,
        ),
        StepKind("confirm", frozenset({"prompt"}), ("prompt",), _describe_confirm, _run_confirm),
        StepKind("note", frozenset({"text"}), ("text",), _describe_note, _run_note, runs_in_dry_run=True),
    )
}


def _what(value: object) -> str:
    """Return how a wrong TOML value reads in an error: "the string 'zero'", "the number 6", "a list"."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"  # a TOML date or time


def _is_exit_code(value: object) -> bool:
    # bool is an int in Python; a TOML `true` is not an exit code.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _check_argv(section: Section, key: str, value: object) -> None:
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        section.errors.add(section.key_path(key), f"must be a non-empty list of strings, not {_what(value)}")


def _check_duration(section: Section, key: str, value: object) -> None:
    if not isinstance(value, str):
        section.errors.add(section.key_path(key), f"must be a duration such as '10m' or '2h', not {_what(value)}")
        return
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        section.errors.add(section.key_path(key), str(exc))
        return
    except OverflowError:  # '99999999999999999999d' does not fit a timedelta
        section.errors.add(section.key_path(key), f"'{value}' is too long a duration")
        return
    if duration <= timedelta(0):
        section.errors.add(section.key_path(key), f"must be longer than 0s, not '{value}'")


def _check_text(section: Section, key: str, value: object) -> None:
    if not (isinstance(value, str) and value.strip()):
        section.errors.add(section.key_path(key), f"must be a non-empty string, not {_what(value)}")


def _check_exit_code(section: Section, key: str, value: object) -> None:
    if not _is_exit_code(value):
        section.errors.add(
            section.key_path(key), f"must be an exit code (an integer from 0 to 255), not {_what(value)}"
        )


def _check_exit_codes(section: Section, key: str, value: object) -> None:
    expects = "a non-empty list of exit codes (integers from 0 to 255)"
    if not (isinstance(value, list) and value):
        section.errors.add(section.key_path(key), f"must be {expects}, not {_what(value)}")
        return
    wrong = [v for v in value if not _is_exit_code(v)]
    if wrong:
        section.errors.add(section.key_path(key), f"must be {expects}, not a list holding {_what(wrong[0])}")


def _check_table(section: Section, key: str, value: object) -> None:
    if not isinstance(value, Mapping):
        section.errors.add(
            section.key_path(key), f'must be a table of arguments such as {{ target = "app" }}, not {_what(value)}'
        )


def _check_expected(section: Section, key: str, value: object) -> None:
    # Compared with the first column of the first row as text (see _same): a scalar, never a list or table.
    if not isinstance(value, str | int | float | bool):
        section.errors.add(section.key_path(key), f"must be a string, number or boolean, not {_what(value)}")


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_variable_name(section: Section, key: str, value: object) -> None:
    # The captured value is used as ${name}: only a name string.Template accepts can be.
    if not (isinstance(value, str) and _NAME_RE.fullmatch(value)):
        section.errors.add(
            section.key_path(key),
            f"must be a variable name (letters, digits and _, not first a digit), not {_what(value)}",
        )


# Every key of every kind, checked after the kind's own checks: a value of the wrong type is
# refused when the file loads, before any step runs, instead of failing its step later (after
# earlier steps may have restored or dropped something). A key means the same in every kind.
_FIELD_CHECKS: dict[str, Callable[[Section, str, object], None]] = {
    "command": _check_argv,  # "action" is checked by its kind: one of the step actions
    "args": _check_table,
    "allow_exit": _check_exit_codes,
    "timeout": _check_duration,
    "target": _check_text,
    "database": _check_text,
    "query": _check_text,
    "expect": _check_expected,
    "capture": _check_variable_name,
    "argv": _check_argv,
    "expect_exit": _check_exit_code,
    "prompt": _check_text,
    "text": _check_text,
    "when": _check_argv,
    "unless": _check_argv,
}
CONDITION_KEYS = frozenset({"when", "unless"})  # accepted by every kind (see the module docstring)


def check_step(kind: str, section: Section, fields: Mapping[str, Any]) -> None:
    """Add every problem of one step's ``fields`` to ``section.errors`` (an unknown kind is the loader's to report)."""
    step_kind = KINDS.get(kind)
    for key in fields:
        section.seen.add(key)
        if step_kind is not None and key not in step_kind.keys | CONDITION_KEYS:
            section.errors.add(
                section.key_path(key), f"is not a key of a '{kind}' step ({', '.join(sorted(step_kind.keys))})"
            )
    if "when" in fields and "unless" in fields:
        section.errors.add(section.path, "a step takes 'when' or 'unless', not both")
    if step_kind is not None:
        for key in step_kind.required:
            if key not in fields:
                section.errors.add(section.key_path(key), f"is required in a '{kind}' step")
        step_kind.check(section, fields)
    for key, check in _FIELD_CHECKS.items():
        if key in fields:
            check(section, key, fields[key])


def default_name(kind: str, fields: Mapping[str, Any]) -> str:
    """Return the name a step without ``name`` is shown with ("opskit drill restore ...", the argv, or its kind)."""
    step_kind = KINDS.get(kind)
    if step_kind is None or step_kind.default_name is None:
        return kind
    return step_kind.default_name(fields) or kind  # "" for a malformed argv, which the load refuses


def describe(step: Step, rendered: Rendered, prefix: str = "would ") -> str:
    """Return what ``step`` does with its variables filled in ("would run: opskit drill restore ...")."""
    return KINDS[step.kind].describe(rendered, prefix)


def run_step(run: StepRun, step: Step, rendered: Rendered, dry_run: bool) -> StepResult:
    """Run one step (in a dry run, only the kinds that change nothing). Raises OpskitError from the step.

    A step whose ``when``/``unless`` condition says no is returned as skipped, with the
    condition's answer as its output; one whose condition cannot be answered, as failed.
    """
    kind = KINDS[step.kind]
    refused = _condition(run, step, rendered)
    if refused is not None:
        return refused
    if dry_run and not kind.runs_in_dry_run:
        return StepResult(step, DRY_RUN, rendered=rendered, output=kind.describe(rendered, "would "))
    return kind.run(run, step, rendered)
