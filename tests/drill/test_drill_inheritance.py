"""A drill with ``jobs = 2`` on a database with inherited tables (issue 15, case 3): the counts match."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from opskit.drill import drill
from tests.drill.test_drill import SERVER, _admin, make_context, take_backup


@pytest.fixture
def inherited_db() -> Iterator[str]:
    """The smallest database with inheritance: one row, in the child."""
    name = f"opskit_t_inh_{secrets.token_hex(4)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"{SERVER}/{name}", autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE parent(a int); CREATE TABLE child() INHERITS (parent); INSERT INTO child VALUES (1);"
        )
    try:
        yield name
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_drill_on_a_database_with_inheritance_passes(inherited_db: str, tmp_path: Path, jobs: int) -> None:
    ctx = make_context(inherited_db, tmp_path, jobs=jobs)
    take_backup(ctx)

    report = drill.run(ctx, target="app", trigger="test")

    assert report.verdict == "pass", [c for c in report.checks if not c.ok]
