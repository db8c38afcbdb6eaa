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

Variables ``now``, ``run_id`` and ``config`` are always defined. Every run writes a Markdown
transcript (each step, its output and its timing) to ``<state_dir>/runbooks/``.
"""

from __future__ import annotations

import dataclasses
import os
import string
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from opskit import catalog
from opskit.config.schema import ConfigErrors, Section
from opskit.context import AppContext
from opskit.core.errors import ConfigError, OpskitError, VerificationFailed
from opskit.core.execute import run as run_command
from opskit.core.log import get_logger
from opskit.core.redaction import redact_text
from opskit.core.units import parse_duration
from opskit.pg import connection

log = get_logger(__name__)

KINDS = ("opskit", "sql", "shell", "confirm", "note")
DEFAULT_TIMEOUT = timedelta(hours=4)
OUTPUT_LINES = 200  # lines of a step's output kept in the transcript
OK, FAILED, SKIPPED, DRY_RUN = "ok", "failed", "skipped", "dry-run"

Confirm = Callable[[str], bool]
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Variable:
    """A runbook variable: its default (None when required) and what it means."""

    name: str
    default: str | None
    help: str = ""


@dataclass(frozen=True)
class Step:
    """One step as written (strings not yet substituted)."""

    index: int
    kind: str
    name: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Runbook:
    """A parsed runbook file."""

    name: str
    path: Path
    title: str
    description: str
    variables: tuple[Variable, ...]
    steps: tuple[Step, ...]


@dataclass
class StepResult:
    """What happened at one step."""

    step: Step
    status: str
    seconds: float = 0.0
    output: str = ""
    error: str = ""
    exit_code: int = 0
    rendered: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class RunbookResult:
    """A run of a runbook: every step attempted, and where the transcript is."""

    runbook: Runbook
    variables: dict[str, str]
    dry_run: bool
    results: list[StepResult] = field(default_factory=list)
    transcript: Path | None = None
    started: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Return True when no step failed."""
        return all(r.status != FAILED for r in self.results)

    @property
    def exit_code(self) -> int:
        """Return 0, or the failed step's code (an opskit step's own exit code; 5 for a failed check)."""
        failed = next((r for r in self.results if r.status == FAILED), None)
        return 0 if failed is None else (failed.exit_code or VerificationFailed.exit_code)

    def raise_for_outcome(self) -> None:
        """Raise RunbookFailed (with the failed step's exit code) when a step failed."""
        failed = next((r for r in self.results if r.status == FAILED), None)
        if failed is not None:
            raise RunbookFailed(
                f"runbook '{self.runbook.name}' stopped at step {failed.step.index} ({failed.step.name}): "
                f"{failed.error}",
                self.exit_code,
                hint=f"see the transcript {self.transcript}" if self.transcript else None,
            )


class RunbookFailed(OpskitError):
    """A runbook stopped at a failing step; the exit code is that step's (an opskit step's own code)."""

    def __init__(self, message: str, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


# --------------------------------------------------------------------------- finding and parsing


def runbooks_dir(ctx: AppContext, directory: str | Path | None = None) -> Path:
    """Return ``directory``, else ``runbooks/`` beside the config file, else ``./runbooks``."""
    if directory is not None:
        return Path(directory)
    if ctx.config.source is not None:
        candidate = ctx.config.source.parent / "runbooks"
        if candidate.is_dir():
            return candidate
    return Path("runbooks")


def list_runbooks(ctx: AppContext, directory: str | Path | None = None) -> list[Runbook]:
    """Return every runbook in the directory, by name. Raises ConfigError for a malformed file."""
    folder = runbooks_dir(ctx, directory)
    return [load(path) for path in sorted(folder.glob("*.toml"))]


def find(ctx: AppContext, name: str, directory: str | Path | None = None) -> Runbook:
    """Return the runbook ``name`` (file stem). Raises ConfigError naming the ones that exist."""
    folder = runbooks_dir(ctx, directory)
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.toml"))) or "none"
        raise ConfigError(f"no runbook named '{name}' in {folder}", hint=f"runbooks there: {known}")
    return load(path)


def load(path: Path) -> Runbook:
    """Parse and validate one runbook file. Raises ConfigError listing every problem (``At 'steps[2].x'``)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"runbook {path} cannot be read: {exc}") from exc
    errors = ConfigErrors()
    root = Section(raw, "", errors)
    title = root.str("title", path.stem)
    description = root.str("description", "")
    variables = []
    for name, value in root.table("vars").raw.items():
        if isinstance(value, str | int | float | bool):
            variables.append(Variable(name, str(value)))
        elif isinstance(value, Mapping):
            spec = Section(value, f"vars.{name}", errors)
            default = spec.get("default", (str, int, float, bool), None, "a string or number")
            required = spec.bool("required", False)
            text = None if default is None else str(default)
            variables.append(Variable(name, None if required and text is None else (text or ""), spec.str("help", "")))
            spec.finish()
        else:
            errors.add(f"vars.{name}", "must be a default value or a table {default, help, required}")
    root.seen.add("vars")
    steps = []
    raw_steps = root.get("steps", list, [], "an array of tables [[steps]]")
    for index, item in enumerate(raw_steps):
        section = Section(item, f"steps[{index}]", errors)
        kind = section.str("kind", "note")
        if kind not in KINDS:
            errors.add(section.key_path("kind"), f"must be one of {', '.join(KINDS)}, not '{kind}'")
        name = section.str("name", "")
        fields = {k: v for k, v in section.raw.items() if k not in ("kind", "name")}
        _check_step(kind, section, fields)
        steps.append(Step(index + 1, kind, name or _default_name(kind, fields), fields))
    if not steps:
        errors.add("steps", "a runbook needs at least one [[steps]]")
    root.finish()
    errors.raise_if_any(path)
    return Runbook(path.stem, path, title, description, tuple(variables), tuple(steps))


_STEP_KEYS: dict[str, set[str]] = {
    "opskit": {"command", "action", "args", "allow_exit", "timeout"},
    "sql": {"target", "database", "query", "expect", "capture"},
    "shell": {"argv", "expect_exit", "timeout"},
    "confirm": {"prompt"},
    "note": {"text"},
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "sql": ("target", "query"),
    "shell": ("argv",),
    "confirm": ("prompt",),
    "note": ("text",),
}


def _check_step(kind: str, section: Section, fields: Mapping[str, Any]) -> None:
    allowed = _STEP_KEYS.get(kind, set())
    for key in fields:
        section.seen.add(key)
        if kind in _STEP_KEYS and key not in allowed:
            section.errors.add(section.key_path(key), f"is not a key of a '{kind}' step ({', '.join(sorted(allowed))})")
    for key in _REQUIRED.get(kind, ()):
        if key not in fields:
            section.errors.add(section.key_path(key), f"is required in a '{kind}' step")
    if kind == "opskit" and ("command" in fields) == ("action" in fields):
        section.errors.add(section.path, "an 'opskit' step needs exactly one of 'command' (CLI argv) or 'action'")
    if kind == "opskit" and "action" in fields and fields["action"] not in ACTIONS:
        section.errors.add(section.key_path("action"), f"must be one of {', '.join(sorted(ACTIONS))}")
    for key in ("command", "argv"):
        value = fields.get(key)
        if value is not None and not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            section.errors.add(section.key_path(key), "must be a non-empty list of strings")
    if "timeout" in fields:
        try:
            parse_duration(str(fields["timeout"]))
        except ValueError as exc:
            section.errors.add(section.key_path("timeout"), str(exc))


def _default_name(kind: str, fields: Mapping[str, Any]) -> str:
    if kind == "opskit":
        return "opskit " + (" ".join(fields.get("command", [])) or str(fields.get("action")))
    if kind == "shell":
        return " ".join(fields.get("argv", []))
    return kind


# --------------------------------------------------------------------------- variables


def resolve_variables(ctx: AppContext, runbook: Runbook, given: Mapping[str, str], run_id: str) -> dict[str, str]:
    """Return every variable's value: ``given`` over defaults, plus ``now``, ``run_id`` and ``config``.

    Raises ConfigError for an unknown ``--var`` or a required variable with no value.
    """
    known = {v.name for v in runbook.variables}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(
            f"runbook '{runbook.name}' has no variable {', '.join(unknown)}",
            hint=f"its variables: {', '.join(sorted(known)) or 'none'}",
        )
    values = {
        "now": catalog.format_time(ctx.clock()),
        "run_id": run_id,
        "config": str(ctx.config.source) if ctx.config.source else "",
    }
    missing = []
    for variable in runbook.variables:
        if variable.name in given:
            values[variable.name] = given[variable.name]
        elif variable.default is not None:
            # A default may refer to variables defined before it.
            values[variable.name] = string.Template(variable.default).safe_substitute(values)
        else:
            missing.append(variable)
    if missing:
        raise ConfigError(
            f"runbook '{runbook.name}' needs " + "; ".join(f"{v.name} ({v.help or 'no default'})" for v in missing),
            hint="pass --var " + " --var ".join(f"{v.name}=..." for v in missing),
        )
    return values


def substitute(value: Any, variables: Mapping[str, str], strict: bool = True) -> Any:
    """Return ``value`` with ``${name}`` replaced in every string (recursively in lists and tables).

    Raises ConfigError for an undefined variable when ``strict`` (a dry run shows it as is).
    """
    if isinstance(value, str):
        template = string.Template(value)
        if not strict:
            return template.safe_substitute(variables)
        try:
            return template.substitute(variables)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"'{value}' uses an undefined variable: {exc}", hint="define it under [vars]") from exc
    if isinstance(value, list):
        return [substitute(v, variables, strict) for v in value]
    if isinstance(value, Mapping):
        return {k: substitute(v, variables, strict) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- running


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
    ``yes``). ``echo`` receives progress lines as they happen. Raises ConfigError for an
    unknown runbook or variable; a failing step is recorded in the result (``exit_code``),
    not raised.
    """
    runbook = find(ctx, name, directory)
    started_at = ctx.clock()
    run_id = catalog.new_backup_id(started_at)
    given = dict(variables or {})
    if target is not None and any(v.name == "target" for v in runbook.variables):
        given.setdefault("target", target)
    values = resolve_variables(ctx, runbook, given, run_id)
    result = RunbookResult(runbook, values, dry_run, started=catalog.format_time(started_at))
    say = echo or (lambda _line: None)
    say(f"runbook {runbook.name}: {runbook.title}" + (" (dry run)" if dry_run else ""))
    origin = time.monotonic()
    for step in runbook.steps:
        say(f"[{step.index}/{len(runbook.steps)}] {step.kind}: {step.name}")
        begin = time.monotonic()
        try:
            rendered = substitute(dict(step.fields), values, strict=not dry_run)
            if dry_run and step.kind != "note":
                outcome = StepResult(step, DRY_RUN, rendered=rendered, output=_describe(step.kind, rendered))
            else:
                outcome = _run_step(ctx, step, rendered, values, yes, confirm)
        except OpskitError as exc:
            outcome = StepResult(step, FAILED, error=exc.one_line(), exit_code=exc.exit_code)
        outcome.seconds = time.monotonic() - begin
        result.results.append(outcome)
        if outcome.output:
            for line in outcome.output.splitlines():
                say(f"    {line}")
        say(f"    -> {outcome.status} ({outcome.seconds:.1f} s)" + (f": {outcome.error}" if outcome.error else ""))
        if outcome.status == FAILED:
            break
    result.seconds = time.monotonic() - origin
    result.transcript = _write_transcript(ctx, result, transcript_dir)
    log.info(
        "runbook finished",
        runbook=runbook.name,
        ok=result.ok,
        steps=len(result.results),
        seconds=round(result.seconds, 2),
        transcript=str(result.transcript),
    )
    return result


def _describe(kind: str, rendered: Mapping[str, Any], prefix: str = "would ") -> str:
    """Return what a step does with its variables filled in ("would run: opskit drill restore ...")."""
    if kind == "opskit":
        if "command" in rendered:
            return f"{prefix}run: opskit " + " ".join(rendered["command"])
        return f"{prefix}call action {rendered['action']} with {dict(rendered.get('args') or {})}"
    if kind == "sql":
        where = rendered["target"] + (f" (database {rendered['database']})" if rendered.get("database") else "")
        return f"{prefix}run on target {where}: {' '.join(str(rendered['query']).split())}"
    if kind == "shell":
        return f"{prefix}run: " + " ".join(rendered["argv"])
    if kind == "confirm":
        return f"{prefix}ask: {rendered['prompt']}"
    return ""


def _run_step(
    ctx: AppContext,
    step: Step,
    rendered: Mapping[str, Any],
    values: dict[str, str],
    yes: bool,
    confirm: Confirm | None,
) -> StepResult:
    if step.kind == "note":
        return StepResult(step, OK, output=str(rendered["text"]).strip(), rendered=rendered)
    if step.kind == "confirm":
        prompt = str(rendered["prompt"])
        if yes:
            return StepResult(step, SKIPPED, output=f"{prompt} -> yes (--yes)", rendered=rendered)
        if confirm is None:
            return StepResult(
                step,
                FAILED,
                error=f"'{prompt}' needs a person to confirm; pass --yes",
                exit_code=ConfigError.exit_code,
                rendered=rendered,
            )
        if confirm(prompt):
            return StepResult(step, OK, output=f"{prompt} -> yes", rendered=rendered)
        return StepResult(step, FAILED, error="declined", exit_code=ConfigError.exit_code, rendered=rendered)
    if step.kind == "sql":
        return _sql_step(ctx, step, rendered, values)
    if step.kind == "shell":
        return _process_step(step, rendered, list(rendered["argv"]), [int(rendered.get("expect_exit", 0))], None)
    if "action" in rendered:
        return _action_step(ctx, step, rendered)
    argv = [sys.executable, "-m", "opskit"]
    if ctx.config.source is not None:
        argv += ["--config", str(ctx.config.source)]
    argv += list(rendered["command"])
    allowed = [int(code) for code in rendered.get("allow_exit", [0])]
    # The child is opskit itself: it gets the OPSKIT_* settings execute.child_env() strips for others.
    env = {k: v for k, v in os.environ.items() if k.startswith("OPSKIT_")}
    return _process_step(step, rendered, argv, allowed, env)


def _process_step(
    step: Step,
    rendered: Mapping[str, Any],
    argv: list[str],
    allowed: Sequence[int],
    env: Mapping[str, str] | None,
) -> StepResult:
    timeout = parse_duration(str(rendered["timeout"])) if "timeout" in rendered else DEFAULT_TIMEOUT
    completed = run_command(argv, env=env, timeout=timeout.total_seconds())
    text = (completed.stdout + completed.stderr).decode("utf-8", "replace")
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


def _sql_step(ctx: AppContext, step: Step, rendered: Mapping[str, Any], values: dict[str, str]) -> StepResult:
    target = ctx.target(str(rendered["target"]))
    database = rendered.get("database")
    with connection.connect(
        target, dbname=str(database) if database else None, autocommit=True, application_name="opskit runbook"
    ) as conn:
        try:
            cur = conn.execute(str(rendered["query"]))  # the runbook author's SQL, run as written
            rows = cur.fetchall() if cur.description else []
            columns = [c.name for c in cur.description] if cur.description else []
        except psycopg.Error as exc:
            return StepResult(step, FAILED, error=f"query failed: {str(exc).strip()}", rendered=rendered)
    lines = [" | ".join(columns)] if columns else []
    lines += [" | ".join("NULL" if v is None else str(v) for v in row) for row in rows[:OUTPUT_LINES]]
    output = "\n".join(lines) or "(no rows)"
    first = rows[0][0] if rows and rows[0] else None
    if "capture" in rendered:
        values[str(rendered["capture"])] = "" if first is None else str(first)
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


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected or str(actual).lower() == str(expected).lower()
    return str(actual) == str(expected)


# --------------------------------------------------------------------------- in-process actions


def _restore_globals(
    ctx: AppContext,
    target: str | None = None,
    to: str = "",
    backup: str = "latest",
    storage: str | None = None,
) -> str:
    from opskit.restore.restore import restore_globals

    source = ctx.target(target)
    storage_name = storage or source.primary_storage
    manifest = catalog.find_backup(ctx.storage(storage_name), source.name, backup)
    # Roles and tablespaces are cluster-wide; the target's own database may not exist yet on a new server.
    server = ctx.target(to)
    maintenance = dataclasses.replace(server, dsn=make_conninfo(server.dsn, dbname="postgres"))
    errors = restore_globals(ctx, manifest, storage_name, maintenance)
    summary = f"replayed the globals of backup {manifest.id} onto target '{to}'"
    if errors:
        summary += f"; {len(errors)} error line(s) (roles that already exist are expected):\n" + "\n".join(errors[:20])
    return summary


def _verify(ctx: AppContext, target: str | None = None, backup: str | None = None, all_backups: bool = False) -> str:
    from opskit.backup import verify

    report = verify.run(ctx, selector=backup, all_backups=bool(all_backups), target=target)
    return "\n".join(f"{v.backup_id}: {v.verdict} ({v.level})" for v in report.verifications) or "nothing verified"


def _status(ctx: AppContext, target: str | None = None) -> str:
    from opskit.ops import status

    report = status.run(ctx, target=target)
    return "\n".join(f"{t.target}: {t.rpo.explain()}" for t in report.targets)


ACTIONS: dict[str, Callable[..., str]] = {
    "restore-globals": _restore_globals,
    "verify": _verify,
    "status": _status,
}


def _action_step(ctx: AppContext, step: Step, rendered: Mapping[str, Any]) -> StepResult:
    args = dict(rendered.get("args") or {})
    try:
        output = ACTIONS[str(rendered["action"])](ctx, **args)
    except TypeError as exc:
        raise ConfigError(
            f"step {step.index} passes arguments action '{rendered['action']}' does not take: {exc}"
        ) from exc
    return StepResult(step, OK, output=output, rendered=rendered)


# --------------------------------------------------------------------------- transcript


def _write_transcript(ctx: AppContext, result: RunbookResult, directory: str | Path | None) -> Path:
    folder = Path(directory) if directory else ctx.state_dir / "runbooks"
    folder.mkdir(parents=True, exist_ok=True)
    run_id = result.variables.get("run_id", "run")
    path = folder / f"{result.runbook.name}-{run_id}.md"
    path.write_text(render_transcript(result), encoding="utf-8")
    return path


def render_transcript(result: RunbookResult) -> str:
    """Return the Markdown transcript of a run: variables, then each step with status, timing and output."""
    book = result.runbook
    verdict = "DRY RUN" if result.dry_run else ("OK" if result.ok else "FAILED")
    lines = [
        f"# Runbook {book.name}: {book.title}",
        "",
        f"- Started {result.started}; {result.seconds:.1f} s in total; result **{verdict}**",
        f"- Steps run: {len(result.results)} of {len(book.steps)}",
        "",
        "## Variables",
        "",
    ]
    lines += [f"- `{k}` = `{v}`" for k, v in sorted(result.variables.items())]
    lines += ["", "## Steps", ""]
    for item in result.results:
        lines.append(f"### {item.step.index}. {item.step.name} ({item.step.kind}): {item.status}, {item.seconds:.1f} s")
        lines.append("")
        if item.rendered and item.status != DRY_RUN and item.step.kind != "note":
            lines += [_describe(item.step.kind, item.rendered, prefix="").capitalize(), ""]
        if item.error:
            lines += [f"Error: {item.error}", ""]
        if item.output:
            lines += ["```", item.output, "```", ""]
    skipped = book.steps[len(result.results) :]
    if skipped:
        lines += ["## Not run", ""] + [f"- {s.index}. {s.name} ({s.kind})" for s in skipped] + [""]
    return "\n".join(lines)
