#!/usr/bin/env python3
"""Print opskit's runtime requirements (its dependencies and every extra but ``dev``), one a line.

The Dockerfile installs these, under ``constraints.txt``, before it copies the source, so an edit
to the code does not reinstall every dependency. ``all`` names opskit's own extras, so self
references (``opskit[...]``) are skipped: their contents are printed from the extras themselves.

Usage: ``python scripts/image-requirements.py [pyproject.toml]``; exits 2 when the file is unreadable.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

SKIPPED_EXTRAS = {"dev"}


def runtime_requirements(pyproject: dict[str, object]) -> list[str]:
    """Return the sorted, de-duplicated requirement strings the container needs at run time."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    requirements = set(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra not in SKIPPED_EXTRAS:
            requirements.update(item for item in items if not item.startswith(f"{project['name']}["))
    return sorted(requirements)


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "pyproject.toml")
    try:
        pyproject = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"image-requirements: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(runtime_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
