"""A program that cannot start is the command's fault (exit 2, one line), never an unexpected error."""

from __future__ import annotations

from pathlib import Path

import pytest

from opskit.core import execute
from opskit.core.errors import ConfigError
from tests.faults.helpers import one_line_error, run_opskit


def test_running_a_program_that_does_not_exist_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        execute.run(["/nonexistent/freeze"])
    assert caught.value.exit_code == 2
    assert caught.value.one_line().startswith("cannot start /nonexistent/freeze: No such file or directory; check")


def test_a_runbook_shell_step_whose_command_cannot_start_exits_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "bad.toml").write_text(
        'title = "t"\n[[steps]]\nkind = "shell"\nargv = ["/nonexistent/x"]\n', encoding="utf-8"
    )
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/b"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    result = run_opskit(config, "-q", "runbook", "run", "bad", "--yes", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "cannot start /nonexistent/x: No such file or directory" in one_line_error(result.stderr)
