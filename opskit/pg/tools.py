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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.core.errors import UnreachableError
from opskit.core.execute import run as run_command
from opskit.core.log import get_logger

log = get_logger(__name__)

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


BinDirs = str | Sequence[str] | None
"""``pg_bin_dir`` as configured: one directory, several (searched in order), or none."""


def bin_dir_list(bin_dirs: BinDirs) -> list[str]:
    """Return the configured directories as a list (a single string is one directory)."""
    if not bin_dirs:
        return []
    return [bin_dirs] if isinstance(bin_dirs, str) else list(bin_dirs)


def tool_candidates(name: str, configured_dir: BinDirs = None) -> list[str]:
    """Return every path where ``name`` may be: the configured directories, PATH, /usr/lib/postgresql/*/bin."""
    paths: list[str] = [str(Path(directory) / name) for directory in bin_dir_list(configured_dir)]
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


def find_tool(name: str, min_major: int, configured_dir: BinDirs = None, *, needed_for: str | None = None) -> Tool:
    """Return the ``name`` binary whose major version is the lowest one >= ``min_major``.

    Configured directories are authoritative: when any of them holds ``name``, only theirs are
    considered (a new enough one is used, else refused). When none holds it, the search goes on
    in PATH and /usr/lib/postgresql/*/bin, and a warning says so. ``needed_for`` says why
    ``min_major`` is needed (default: "a PostgreSQL <min_major> server"), for the error.
    Raises UnreachableError (exit 3) naming what was found and what to install.
    """
    directories = bin_dir_list(configured_dir)
    found: list[Tool] = []
    for path in tool_candidates(name, configured_dir):
        version = tool_version(path)
        if version is not None:
            found.append(Tool(name, path, version[0], version[1]))
    if directories:
        roots = [str(Path(d)) + os.sep for d in directories]
        configured = [t for t in found if any(t.path.startswith(root) for root in roots)]
        if configured:
            found = configured
        else:
            log.warning(
                f"no {name} in tools.pg_bin_dir; searching PATH and /usr/lib/postgresql/*/bin",
                pg_bin_dir=directories,
            )
    usable = sorted((t for t in found if t.major >= min_major), key=lambda t: (t.major, t.path))
    if usable:
        return usable[0]
    seen = ", ".join(f"{t.name} {t.version} ({t.path})" for t in found) or "none"
    raise UnreachableError(
        f"no {name} of major version {min_major} or newer was found (found: {seen}); an older {name} "
        f"cannot safely handle {needed_for or f'a PostgreSQL {min_major} server'}",
        hint=f"install postgresql-client-{min_major} or set tools.pg_bin_dir to its bin directory",
    )


# PostgreSQL 17 added transaction_timeout, and pg_restore 17 and later start every session with
# ``SET transaction_timeout = 0``, which a server before 17 rejects as an unknown parameter (with
# --exit-on-error the restore stops there). Only pg_restore 17+ reads their pg_dump's archives.
TRANSACTION_TIMEOUT_MAJOR = 17


def check_restore_into(pg_restore: Tool, server_major: int, dump_major: int) -> None:
    """Refuse up front, before anything is created, a ``pg_restore`` that a ``server_major`` server would reject.

    Raises UnreachableError (exit 3) with the reason and what would work.
    """
    reason = restore_incompatibility(pg_restore, server_major)
    if reason is None:
        return
    if dump_major >= TRANSACTION_TIMEOUT_MAJOR:
        fix = (
            f"this archive was made by pg_dump {dump_major}, which only pg_restore {dump_major}+ reads: restore it "
            f"into a PostgreSQL {TRANSACTION_TIMEOUT_MAJOR}+ server, and back up PostgreSQL {server_major} with "
            f"pg_dump {server_major} (tools.pg_bin_dir) so its backups restore into {server_major}"
        )
    else:
        fix = (
            f"install postgresql-client-{max(dump_major, server_major)} (or add its bin directory to tools.pg_bin_dir)"
        )
    raise UnreachableError(f"{reason}; nothing was restored", hint=fix)


def restore_incompatibility(pg_restore: Tool, server_major: int) -> str | None:
    """Return why ``pg_restore`` cannot restore into a PostgreSQL ``server_major`` server, or None when it can."""
    if pg_restore.major >= TRANSACTION_TIMEOUT_MAJOR > server_major > 0:
        return (
            f"pg_restore {pg_restore.version} ({pg_restore.path}) sends SET transaction_timeout, which a "
            f"PostgreSQL {server_major} server rejects"
        )
    return None
