"""Helpers for migration tests: engines on test databases, queries, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from opskit.config.migrations import MigrationSettings
from opskit.flyway.engine import Engine
from tests.databases import dsn_for


@contextmanager
def engine_for(dbname: str, settings: MigrationSettings) -> Iterator[Engine]:
    """Yield an Engine on an autocommit connection to ``dbname``."""
    with psycopg.connect(dsn_for(dbname), autocommit=True) as conn:
        yield Engine(conn, settings, clock=lambda: datetime.now(UTC))


def query(dbname: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Return all rows of a query in ``dbname``."""
    with psycopg.connect(dsn_for(dbname), autocommit=True) as conn:
        return conn.execute(text, params).fetchall()


def opskit(
    config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in the config's directory and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=config.parent,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def start_opskit(config: Path, *args: str) -> subprocess.Popen[str]:
    """Start the real CLI without waiting for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "opskit", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )


def write_config(tmp_path: Path, dbname: str, extra: str = "") -> Path:
    """Write opskit.toml with target ``app`` on ``dbname``, local storage and migrations in ./sql."""
    path = tmp_path / "opskit.toml"
    path.write_text(
        f'[targets.app]\ndsn = "{dsn_for(dbname)}"\n\n[storages.local]\nurl = "file://{tmp_path / "backups"}"\n\n'
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[migrations]\nlocations = ["filesystem:{tmp_path / "sql"}"]\nflyway_config = []\n{extra}',
        encoding="utf-8",
    )
    return path


def write_staged_config(tmp_path: Path, dbname: str) -> Path:
    """Write :func:`write_config`'s file with a target ``stage`` on the same database, ``app``'s staging."""
    path = write_config(tmp_path, dbname, f'\n[targets.stage]\ndsn = "{dsn_for(dbname)}"\n')
    text = path.read_text(encoding="utf-8").replace("[targets.app]\n", '[targets.app]\nstaging = "stage"\n', 1)
    path.write_text(text, encoding="utf-8")
    return path
