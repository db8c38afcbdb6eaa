"""Creating the history table's first rows: the schemas ``createSchemas`` makes, and ``baseline`` (§2.3, §4.4)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from opskit.config.migrations import MigrationSettings
from opskit.core.errors import ConfigError, VerificationFailed
from opskit.flyway.history import SCHEMA_DESCRIPTION, HistoryTable, NewRow, quote_java
from opskit.flyway.names import Version
from opskit.flyway.results import BaselineReport
from opskit.flyway.session import schema_exists


def create_schemas(
    conn: psycopg.Connection[Any], history: HistoryTable, settings: MigrationSettings, installed_by: str
) -> tuple[str, ...]:
    """Create the configured schemas that are missing (``createSchemas``) and return them.

    When the history table does not exist yet, it is created with Flyway's SCHEMA row (§2.3) in the
    same transaction. Raises psycopg.Error.
    """
    if not settings.create_schemas or not settings.schemas:
        return ()
    missing = [s for s in settings.schemas if not schema_exists(conn, s)]
    if not missing:
        return ()
    with conn.transaction():
        for schema in missing:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        if not history.exists(conn):
            history.create(conn)
            history.insert(
                conn,
                NewRow(
                    None,
                    SCHEMA_DESCRIPTION,
                    "SCHEMA",
                    ",".join(quote_java(s) for s in missing),
                    None,
                    installed_by,
                    0,
                    True,
                ),
            )
    return tuple(missing)


def baseline_table(
    conn: psycopg.Connection[Any],
    history: HistoryTable,
    settings: MigrationSettings,
    schema: str,
    installed_by: str,
    version_text: str,
    description: str,
) -> BaselineReport:
    """Baseline the history table at ``version_text`` (§4.4), creating it (and the schema) when missing.

    Returns whether a BASELINE row was written. Raises ConfigError for an invalid version or a
    missing schema without ``createSchemas``, VerificationFailed with Flyway's messages when the
    table holds another baseline or migrations.
    """
    try:
        version = Version.parse(version_text)
    except ValueError:
        raise ConfigError(f"invalid baseline version '{version_text}'") from None
    table = history.display
    if not history.exists(conn):
        with conn.transaction():
            created_schema = False
            if not schema_exists(conn, schema):
                if not settings.create_schemas:
                    raise ConfigError(
                        f"Schema {quote_java(schema)} doesn't exist yet",
                        hint="create it, or set migrations.create_schemas = true",
                    )
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                created_schema = True
            history.create(
                conn,
                baseline=NewRow(version.text, description, "BASELINE", description, None, installed_by, 0, True),
            )
            if created_schema:
                history.insert(
                    conn,
                    NewRow(
                        None,
                        SCHEMA_DESCRIPTION,
                        "SCHEMA",
                        quote_java(schema),
                        None,
                        installed_by,
                        0,
                        True,
                    ),
                )
        return BaselineReport(version.text, description, created=True)
    rows = history.read(conn)
    marker = next((r for r in rows[:2] if r.is_baseline), None)
    if marker is not None:
        if marker.parsed_version == version and marker.description == description:
            return BaselineReport(version.text, description, created=False)
        raise VerificationFailed(
            f"Unable to baseline schema history table {table} with ({version.text},{description}) as it has "
            f"already been baselined with ({marker.version},{marker.description})\nNeed to reset your "
            "baseline? Learn more: https://rd.gt/3CdwkXD",
        )
    if any(r.type == "SCHEMA" for r in rows) and version == Version.parse("0"):
        raise VerificationFailed(
            f"Unable to baseline schema history table {table} with version 0 as this "
            "version was used for schema creation"
        )
    if any(not r.is_synthetic for r in rows):
        raise VerificationFailed(f"Unable to baseline schema history table {table} as it already contains migrations")
    if not rows:
        raise VerificationFailed(
            f"Unable to baseline schema history table {table} as it already exists, and is empty.\nDelete the "
            "schema history table with the clean command, and run baseline again."
        )
    raise VerificationFailed(f"Unable to baseline schema history table {table} as it already contains migrations")
