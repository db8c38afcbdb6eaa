"""The exception tree: closed, documented, one exit code per class."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from opskit.core import errors
from opskit.core.errors import (
    EXIT_CODES,
    BackupFailed,
    Cancelled,
    ConfigError,
    MigrationFailed,
    OpskitError,
    RunbookFailed,
    StorageError,
)

PACKAGE = Path(errors.__file__).resolve().parents[1]


def _tree() -> list[type[OpskitError]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, OpskitError) and value.__module__ == errors.__name__
    ]


def test_no_module_outside_errors_py_subclasses_an_opskit_error() -> None:
    names = {cls.__name__ for cls in _tree()}
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
                if bases & names:
                    outside.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert outside == []


def test_the_module_docstring_lists_every_class_and_every_exit_code_has_a_meaning() -> None:
    doc = errors.__doc__ or ""
    for cls in _tree():
        assert cls.__name__ in doc
        if cls is not RunbookFailed:  # its code is the failed step's
            assert cls.exit_code in EXIT_CODES


def test_a_cancel_is_not_a_failed_backup_but_still_exits_4() -> None:
    assert not issubclass(Cancelled, BackupFailed)
    assert Cancelled.exit_code == BackupFailed.exit_code == 4
    with pytest.raises(OpskitError):
        raise Cancelled("the run was cancelled")


def test_context_fields_are_keyword_only_and_typed_attributes() -> None:
    with pytest.raises(TypeError):
        RunbookFailed("stopped", None, 5)  # type: ignore[call-arg]
    assert RunbookFailed("stopped", exit_code=5).exit_code == 5
    assert ConfigError("bad").problems == []
    assert ConfigError("bad", problems=("At 'x': y",)).problems == ["At 'x': y"]
    assert StorageError("gone").bucket_missing is False
    failure = MigrationFailed("V1 failed", migration="V1__a.sql", database_error="syntax error")
    assert (failure.migration, failure.database_error, failure.restore_command, failure.restored) == (
        "V1__a.sql",
        "syntax error",
        None,
        False,
    )


def test_one_line_joins_message_and_hint() -> None:
    assert OpskitError("it broke.\nbadly", hint="try again").one_line() == "it broke. badly; try again"
