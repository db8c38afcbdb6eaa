"""The exit codes are defined once (core/errors.py) and the README's table is that definition."""

from __future__ import annotations

import re
from pathlib import Path

from opskit.cli import main
from opskit.core.errors import EXIT_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_exit_table() -> dict[int, str]:
    """Return the README's exit-code table as {code: meaning}."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Exit codes") :]
    section = section[: section.index("\n## ")]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)
    return {int(code): meaning for code, meaning in rows}


def test_the_readme_exit_code_table_is_exactly_the_codes_errors_py_defines() -> None:
    assert readme_exit_table() == EXIT_CODES


def test_the_cli_help_names_every_exit_code() -> None:
    help_text = main.help or ""
    for code in EXIT_CODES:
        assert re.search(rf"\b{code}\b", help_text), code
