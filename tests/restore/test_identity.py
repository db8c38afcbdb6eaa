"""A restored database keeps the source's encoding and locale (recorded in the manifest at backup time)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from opskit.backup import backup
from opskit.core.errors import RestoreFailed
from opskit.restore import restore
from tests.databases import admin_connection, drop_databases, local_config, run_sql


@pytest.fixture
def latin1_database() -> Iterator[str]:
    """Yield a LATIN1 / C database holding a table with a non-ASCII value; drop it and its restores after."""
    prefix = f"opskit_t_{secrets.token_hex(3)}"
    name = f"{prefix}_latin1"
    with admin_connection() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'").format(
                sql.Identifier(name)
            )
        )
    run_sql(name, "CREATE TABLE words (w text); INSERT INTO words VALUES ('café');")
    try:
        yield name
    finally:
        drop_databases(prefix)


def identity_of(database: str) -> tuple[str, str, str]:
    with admin_connection() as conn:
        row = conn.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s",
            (database,),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_a_latin1_c_source_restores_as_latin1_c(latin1_database: str, tmp_path: Path, make_context: Any) -> None:
    ctx = make_context(local_config(latin1_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest

    restored = restore.run(ctx, selector=manifest.id, target="app")

    assert manifest.server["identity"]["encoding"] == "LATIN1"
    assert restored.ok
    assert identity_of(restored.database) == ("LATIN1", "C", "C")


def test_encoding_and_locale_override_the_backups(latin1_database: str, tmp_path: Path, make_context: Any) -> None:
    ctx = make_context(local_config(latin1_database, tmp_path / "backups"))
    backup.run(ctx, target="app")

    restored = restore.run(ctx, target="app", encoding="UTF8", locale="C.UTF-8")

    assert restored.ok
    assert identity_of(restored.database) == ("UTF8", "C.UTF-8", "C.UTF-8")


def test_a_locale_the_server_lacks_is_named_and_nothing_is_created(
    latin1_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = make_context(local_config(latin1_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest

    with pytest.raises(RestoreFailed) as caught:
        restore.run(ctx, target="app", locale="xx_NO.LOCALE")

    assert "xx_NO.LOCALE" in caught.value.message and "--encoding and --locale" in (caught.value.hint or "")
    with admin_connection() as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (restore.default_database_name(manifest),)
        ).fetchone() == (0,)


def test_a_manifest_without_the_identity_restores_with_the_servers_defaults(
    latin1_database: str, tmp_path: Path, make_context: Any
) -> None:
    ctx = make_context(local_config(latin1_database, tmp_path / "backups"))
    manifest = backup.run(ctx, target="app").manifest
    path = tmp_path / "backups" / "app" / manifest.id / "manifest.json"
    data = json.loads(path.read_text())
    del data["server"]["identity"]
    path.write_text(json.dumps(data))

    restored = restore.run(ctx, selector=manifest.id, target="app")

    assert restored.ok
    with admin_connection() as conn:
        default = conn.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'template0'")
        assert identity_of(restored.database)[0] == default.fetchone()[0]  # type: ignore[index]
