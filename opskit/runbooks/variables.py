"""A runbook's variables: values from ``--var`` over defaults, and ``${name}`` filled into a step's strings."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from opskit import catalog
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.runbooks.model import Runbook


def resolve_variables(ctx: AppContext, runbook: Runbook, given: Mapping[str, str], run_id: str) -> dict[str, str]:
    """Return every variable's value: ``given`` over defaults, plus ``now``, ``run_id`` and ``config``.

    Raises ConfigError for an unknown ``--var``, a required variable with no value, or a
    value that does not match its variable's ``pattern``.
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
    for variable in runbook.variables:
        value = values.get(variable.name)
        if variable.pattern is not None and value is not None and not re.fullmatch(variable.pattern, value):
            raise ConfigError(
                f"runbook '{runbook.name}': {variable.name}={value!r} does not match {variable.pattern}",
                hint=f"{variable.name} is {variable.help or 'checked by its pattern'}",
            )
    if missing:
        raise ConfigError(
            f"runbook '{runbook.name}' needs " + "; ".join(f"{v.name} ({v.help or 'no default'})" for v in missing),
            hint="pass --var " + " --var ".join(f"{v.name}=..." for v in missing),
        )
    return values


def substitute(value: Any, variables: Mapping[str, str], strict: bool = True) -> Any:
    """Return ``value`` with ``${name}`` replaced in every string (recursively in lists and tables).

    ``value`` is any TOML value of a step, so the result has its shape. Raises ConfigError for
    an undefined variable when ``strict`` (a dry run shows it as is).
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
