"""PostgreSQL client tools: finding pg_dump/pg_restore/... and reading their versions.

A pg_dump older than the server fails, sometimes silently (GitLab's 2017 outage began with a
pg_dump 9.2 against a 9.6 server), so every tool is chosen by running ``--version`` on each
candidate and taking the lowest major version that is at least the server's (or the dump's).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from opskit.core.errors import UnreachableError
from opskit.core.execute import run as run_command

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


# --------------------------------------------------------------------------- client tools


@dataclass(frozen=True)
class Tool:
    """A PostgreSQL client program and the version it reported."""

    name: str
    path: str
    major: int
    version: str


@functools.lru_cache(maxsize=64)
def tool_version(path: str) -> tuple[int, str] | None:
    """Run ``path --version`` (once per process); return (major, full version) or None when it is not a PostgreSQL tool."""
    try:
        result = run_command([path, "--version"], timeout=15)
    except Exception:
        return None
    text = result.stdout.decode("utf-8", "replace").strip()
    match = _VERSION_RE.search(text)
    if result.returncode != 0 or not match:
        return None
    major = int(match.group(1))
    version = f"{match.group(1)}.{match.group(2)}" if match.group(2) else match.group(1)
    return major, version


def tool_candidates(name: str, configured_dir: str | None = None) -> list[str]:
    """Return every path where ``name`` may be: the configured directory, PATH, /usr/lib/postgresql/*/bin."""
    paths: list[str] = []
    if configured_dir:
        paths.append(str(Path(configured_dir) / name))
    on_path = shutil.which(name)
    versioned = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    # Debian's pg_wrapper (what /usr/bin/pg_dump points to) only dispatches to one of the versioned
    # binaries below, and is a Perl script that is slow to start: skip it when those are present.
    if on_path and not (versioned and os.path.basename(os.path.realpath(on_path)) == "pg_wrapper"):
        paths.append(os.path.realpath(on_path))
    paths.extend(versioned)
    paths.extend(sorted(glob.glob(f"/usr/pgsql-*/bin/{name}")))  # RHEL/PGDG layout
    seen: set[str] = set()
    unique = []
    for path in paths:
        if path not in seen and os.access(path, os.X_OK):
            seen.add(path)
            unique.append(path)
    return unique


def find_tool(name: str, min_major: int, configured_dir: str | None = None) -> Tool:
    """Return the ``name`` binary whose major version is the lowest one >= ``min_major``.

    A configured directory is authoritative: its tool is used if new enough, else refused.
    Raises UnreachableError (exit 3) naming what was found and what to install.
    """
    candidates = tool_candidates(name, configured_dir)
    found: list[Tool] = []
    for path in candidates:
        version = tool_version(path)
        if version is not None:
            found.append(Tool(name, path, version[0], version[1]))
    if configured_dir:
        configured = [t for t in found if t.path.startswith(str(Path(configured_dir)))]
        if configured:
            found = configured
    usable = sorted((t for t in found if t.major >= min_major), key=lambda t: (t.major, t.path))
    if usable:
        return usable[0]
    seen = ", ".join(f"{t.name} {t.version} ({t.path})" for t in found) or "none"
    raise UnreachableError(
        f"no {name} of major version {min_major} or newer was found (found: {seen}); an older {name} "
        f"cannot safely handle a PostgreSQL {min_major} server",
        hint=f"install postgresql-client-{min_major} or set tools.pg_bin_dir to its bin directory",
    )
