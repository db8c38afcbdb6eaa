"""Fixtures for migration tests: a fresh database per test, migration folders, the real CLI."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.databases import create_database, drop_databases


@pytest.fixture
def migrate_db() -> Iterator[str]:
    """Yield a fresh empty database named opskit_t_migrate_<hex>; drop it (and its restores) afterwards."""
    prefix = f"opskit_t_migrate_{secrets.token_hex(3)}"
    name = create_database(prefix)
    try:
        yield name
    finally:
        drop_databases(prefix)


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Callable[..., Path]:
    """Return a writer: scripts_dir({"V1__a.sql": "..."}) -> the folder holding them."""
    root = tmp_path / "sql"
    root.mkdir()

    def write(files: dict[str, str] | None = None) -> Path:
        for name, text in (files or {}).items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root

    return write
