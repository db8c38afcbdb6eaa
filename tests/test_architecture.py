"""The shape of the code: layers one way, no import circles, modules of a readable size.

`make lint` runs the same checks; running them in the suite means CI (which runs `make test`)
fails on a new upward import or circle too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import REPO_ROOT

BIN = Path(sys.executable).parent


def test_the_layers_contract_holds() -> None:
    result = subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_two_modules_import_each_other() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/check-import-cycles.py"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == "no import circles"


def test_a_new_circle_would_be_found(tmp_path: Path) -> None:
    # The checker itself: two modules that import each other are reported.
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from circled import b\n")
    (package / "b.py").write_text("from circled import a\n")
    script = (REPO_ROOT / "scripts" / "check-import-cycles.py").read_text().replace('"opskit"', '"circled"')
    checker = tmp_path / "check.py"
    checker.write_text(script)
    result = subprocess.run(
        [sys.executable, str(checker)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(BIN)},
    )
    assert result.returncode == 1
    assert "import circle: circled.a <-> circled.b" in result.stdout
