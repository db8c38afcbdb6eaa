"""Finding and parsing runbook files (``runbooks/*.toml``): every problem named by its path, all at once."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from opskit.config.schema import ConfigErrors, Section
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.runbooks.model import Runbook, Step, Variable
from opskit.runbooks.steps import KINDS, check_step, default_name

# Where an installed opskit keeps the shipped runbooks (the container image copies runbooks/ here).
SHARE_DIRS: tuple[Path, ...] = (Path("/usr/local/share/opskit/runbooks"), Path("/usr/share/opskit/runbooks"))


def runbooks_dir(ctx: AppContext, directory: str | Path | None = None) -> Path:
    """Return where runbooks are read from: the first directory that exists, in this order.

    ``directory`` (``--dir``), ``runbooks/`` beside the config file, ``./runbooks``, then the
    installed share directories (:data:`SHARE_DIRS`); ``./runbooks`` when none exists, so the
    error names a path the operator can create.
    """
    if directory is not None:
        return Path(directory)
    candidates = [ctx.config.source.parent / "runbooks"] if ctx.config.source is not None else []
    candidates += [Path("runbooks"), *SHARE_DIRS]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return Path("runbooks")


def searched_dirs(ctx: AppContext, directory: str | Path | None = None) -> list[Path]:
    """Return the directories :func:`runbooks_dir` looks in, in its order, as absolute paths (for messages)."""
    if directory is not None:
        return [Path(directory).resolve()]
    candidates = [ctx.config.source.parent / "runbooks"] if ctx.config.source is not None else []
    return list(dict.fromkeys(p.resolve() for p in [*candidates, Path("runbooks"), *SHARE_DIRS]))


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
    """Parse and validate one runbook file, every field of every step; return the Runbook.

    Raises ConfigError naming the file and listing every problem, each step's as
    ``step 3 (name): At 'steps[2].x': must be ...``.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"runbook {path} cannot be read: {exc}") from exc
    errors = ConfigErrors()
    root = Section(raw, "", errors)
    title = root.str("title", path.stem)
    description = root.str("description", "")
    variables = _variables(root, errors)
    steps = []
    raw_steps = root.get("steps", list, [], "an array of tables [[steps]]")
    for index, item in enumerate(raw_steps):
        # Each step's problems are collected apart, then named by the step as `runbook show`
        # and a failed run number it ("step 2 (Restore ...)"), beside the TOML path.
        step_errors = ConfigErrors()
        section = Section(item, f"steps[{index}]", step_errors)
        kind = section.str("kind", "note")
        if kind not in KINDS:
            step_errors.add(section.key_path("kind"), f"must be one of {', '.join(KINDS)}, not '{kind}'")
        name = section.str("name", "")
        fields = {k: v for k, v in section.raw.items() if k not in ("kind", "name")}
        check_step(kind, section, fields)
        step = Step(index + 1, kind, name or default_name(kind, fields), fields)
        errors.problems += [f"step {step.index} ({step.name}): {problem}" for problem in step_errors.problems]
        steps.append(step)
    if not steps:
        errors.add("steps", "a runbook needs at least one [[steps]]")
    root.finish()
    if errors.problems:
        # One line naming the file (as a job file's error does), not "the configuration": a
        # runbook is checked whole when it loads, so no step of a malformed one ever runs.
        raise ConfigError(
            f"runbook file {path}: " + "; ".join(errors.problems),
            hint="fix the runbook file; no step was run",
            problems=errors.problems,
        )
    return Runbook(path.stem, path, title, description, tuple(variables), tuple(steps))


def _variables(root: Section, errors: ConfigErrors) -> list[Variable]:
    """Return the ``[vars]`` table's variables: ``name = default`` or ``name = {default, help, required, pattern}``."""
    variables = []
    for name, value in root.table("vars").raw.items():
        if isinstance(value, str | int | float | bool):
            variables.append(Variable(name, str(value)))
        elif isinstance(value, Mapping):
            spec = Section(value, f"vars.{name}", errors)
            default = spec.get("default", (str, int, float, bool), None, "a string or number")
            required = spec.bool("required", False)
            text = None if default is None else str(default)
            pattern = spec.get("pattern", str, None, "a regular expression the whole value must match")
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    errors.add(f"vars.{name}.pattern", f"is not a regular expression: {exc}")
                    pattern = None
            value = None if required and text is None else (text or "")
            variables.append(Variable(name, value, spec.str("help", ""), pattern))
            spec.finish()
        else:
            errors.add(f"vars.{name}", "must be a default value or a table {default, help, required}")
    root.seen.add("vars")
    return variables
