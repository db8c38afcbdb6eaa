"""``engine = "flyway"``: run a real ``flyway`` binary with the same settings and read its JSON.

The settings opskit resolved (opskit.toml, Flyway files, ``FLYWAY_*``) are passed as
``-key=value`` arguments, so Flyway sees exactly what opskit would have used; the target's
password goes through ``FLYWAY_PASSWORD`` in the child's environment, never argv. Every
command runs with ``-outputType=json`` and the document is parsed by field name (``docs/flyway-compat.md`` §6.1).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from opskit.config.migrations import MigrationSettings
from opskit.config.model import TargetConfig
from opskit.core.errors import (
    ConfigError,
    MigrationFailed,
    MigrationValidationFailed,
    OpskitError,
    UnreachableError,
    VerificationFailed,
)
from opskit.core.execute import run as run_command
from opskit.flyway.results import Applied, BaselineReport, InfoOutcome, MigrateReport, RepairReport
from opskit.flyway.state import InfoState
from opskit.pg import connection

TIMEOUT_SECONDS = 6 * 3600  # a long data migration is legitimate; the lock protects the database meanwhile


def find_binary(settings: MigrationSettings) -> str:
    """Return the path of the flyway binary. Raises ConfigError when it is not installed."""
    found = shutil.which(settings.flyway_binary)
    if found is None:
        raise ConfigError(
            f"engine = \"flyway\" but no '{settings.flyway_binary}' binary was found",
            hint='install Flyway, set migrations.flyway_binary, or use engine = "opskit"',
        )
    return found


def jdbc_url(target: TargetConfig) -> str:
    """Return the JDBC URL for the target's libpq parameters (libpq environment fills the gaps)."""
    parts = connection.dsn_parts(target)
    env = os.environ
    host = str(parts.get("host") or env.get("PGHOST") or "localhost")
    port = str(parts.get("port") or env.get("PGPORT") or "5432")
    if host.startswith("/"):
        raise ConfigError(
            f"target '{target.name}' connects through a Unix socket, which Flyway's JDBC driver cannot",
            hint="give the target a host name or address",
        )
    hosts = ",".join(
        f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in zip(host.split(","), port.split(","), strict=False)
    )
    params = {}
    for libpq, jdbc in (
        ("sslmode", "sslmode"),
        ("sslrootcert", "sslrootcert"),
        ("sslcert", "sslcert"),
        ("sslkey", "sslkey"),
        ("connect_timeout", "connectTimeout"),
    ):
        if parts.get(libpq):
            params[jdbc] = str(parts[libpq])
    query = f"?{urlencode(params)}" if params else ""
    return f"jdbc:postgresql://{hosts}/{quote(connection.database_of(target))}{query}"


def _arguments(target: TargetConfig, settings: MigrationSettings) -> tuple[list[str], dict[str, str]]:
    parts = connection.dsn_parts(target)
    user = parts.get("user") or os.environ.get("PGUSER") or settings.user
    args = [f"-url={jdbc_url(target)}", "-outputType=json", "-skipCheckForUpdate"]
    if user:
        args.append(f"-user={user}")
    args.append("-locations=" + ",".join(f"filesystem:{os.path.abspath(p)}" for p in settings.locations))
    s = settings
    simple: dict[str, Any] = {
        "table": s.table,
        "schemas": ",".join(s.schemas),
        "defaultSchema": s.default_schema,
        "tablespace": s.tablespace,
        "baselineOnMigrate": s.baseline_on_migrate,
        "baselineVersion": s.baseline_version,
        "baselineDescription": s.baseline_description,
        "validateOnMigrate": s.validate_on_migrate,
        "outOfOrder": s.out_of_order,
        "target": s.target,
        "ignoreMigrationPatterns": ",".join(s.ignore_migration_patterns),
        "installedBy": s.installed_by,
        "createSchemas": s.create_schemas,
        "mixed": s.mixed,
        "group": s.group,
        "executeInTransaction": s.execute_in_transaction,
        "encoding": s.encoding,
        "sqlMigrationPrefix": s.naming.versioned_prefix,
        "sqlMigrationSeparator": s.naming.separator,
        "sqlMigrationSuffixes": ",".join(s.naming.suffixes),
        "repeatableSqlMigrationPrefix": s.naming.repeatable_prefix,
        "validateMigrationNaming": s.validate_migration_naming,
        "lockRetryCount": s.lock_retry_count,
        "placeholderReplacement": s.placeholder_syntax.enabled,
        "placeholderPrefix": s.placeholder_syntax.prefix,
        "placeholderSuffix": s.placeholder_syntax.suffix,
        "placeholderSeparator": s.placeholder_syntax.separator,
        "postgresql.transactional.lock": s.transactional_lock,
    }
    for key, value in simple.items():
        if value is None or value == "":
            continue
        args.append(f"-{key}={str(value).lower() if isinstance(value, bool) else value}")
    for name, value in s.placeholders.items():
        args.append(f"-placeholders.{name}={value}")
    env: dict[str, str] = {}
    secret = connection.password(target) or settings.password
    if secret:
        env["FLYWAY_PASSWORD"] = secret
    return args, env


def run_flyway(
    command: str, target: TargetConfig, settings: MigrationSettings, extra: list[str] | None = None
) -> dict[str, Any]:
    """Run ``flyway <command>`` and return its JSON document.

    Raises, by Flyway's ``errorCode`` (:func:`_error_kind`): UnreachableError (exit 3) when Flyway
    could not connect, ConfigError (exit 2) for its configuration errors or a binary that
    cannot start or prints no JSON, VerificationFailed (exit 5) for a failed validation, and
    MigrationFailed (exit 4) for every other failure, including a binary that exits non-zero
    without saying why (whatever the command: whether anything was applied is unknown).
    """
    args, env = _arguments(target, settings)
    argv = [find_binary(settings), *args, *(extra or []), command]
    result = run_command(argv, env=env, timeout=TIMEOUT_SECONDS)
    text = result.stdout.decode("utf-8", "replace")
    start = text.find("{")
    try:
        document: dict[str, Any] = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        document = {}
    error = document.get("error") or document.get("exception")
    if result.returncode != 0 or error:
        message = (error or {}).get("message") if isinstance(error, dict) else error
        code = error.get("errorCode") if isinstance(error, dict) else None
        if not message:
            # No JSON error to read: Flyway died before it could write one (no Java, killed, a
            # crash). Say so with its exit status and whatever it wrote to stderr.
            tail = result.stderr.decode("utf-8", "replace").strip()[-500:]
            status = f"exited with status {result.returncode}" if result.returncode else "reported an error"
            message = f"{status} and " + (f"wrote: {tail}" if tail else "printed nothing")
            raise MigrationFailed(
                f"flyway {command} {message}",
                hint="run the flyway binary by hand (flyway -v) to see why; check 'opskit migrate info' "
                "before migrating again",
            )
        kind = _error_kind(command, code, str(message))
        raise kind(f"flyway {command} failed: {message}", hint=_HINTS.get(kind, "see Flyway's message above"))
    if not document:
        raise ConfigError(
            f"flyway {command} printed no JSON document",
            hint="check that migrations.flyway_binary is Flyway 7 or later (it needs -outputType=json)",
        )
    return document


# Flyway's ErrorCode values (``error.errorCode`` of its JSON) that mean "validation failed": a
# failed validateOnMigrate inside ``migrate`` must exit 5 like ``validate`` itself, not 4.
VALIDATION_ERROR_CODES = frozenset(
    {
        "VALIDATE_ERROR",
        "SCHEMA_DOES_NOT_EXIST",
        "CHECKSUM_MISMATCH",
        "TYPE_MISMATCH",
        "DESCRIPTION_MISMATCH",
        "OUTDATED_REPEATABLE_MIGRATION",
        "RESOLVED_REPEATABLE_MIGRATION_NOT_APPLIED",
        "RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED",
        "APPLIED_REPEATABLE_MIGRATION_NOT_RESOLVED",
        "APPLIED_VERSIONED_MIGRATION_NOT_RESOLVED",
        "FAILED_REPEATABLE_MIGRATION",
        "FAILED_VERSIONED_MIGRATION",
    }
)
# The other codes with a meaning of their own (Flyway's ErrorCode enum); the rest (ERROR, FAULT,
# and codes newer than this list) are the command failing.
_CODE_KINDS: dict[str, type[OpskitError]] = {
    "DB_CONNECTION": UnreachableError,
    "CONFIGURATION": ConfigError,
    "CLI_USAGE": ConfigError,
    "JDBC_DRIVER": ConfigError,
    "DUPLICATE_VERSIONED_MIGRATION": ConfigError,
    "DUPLICATE_REPEATABLE_MIGRATION": ConfigError,
    "DUPLICATE_UNDO_MIGRATION": ConfigError,
    "DUPLICATE_DELETED_MIGRATION": ConfigError,
}
_KIND_BY_COMMAND: dict[str, type[OpskitError]] = {"validate": VerificationFailed}
_HINTS: dict[type[OpskitError], str] = {
    UnreachableError: "check the target's host, port and credentials; see Flyway's message above",
    ConfigError: "fix the Flyway setting Flyway's message names",
}


def _error_kind(command: str, code: object, message: str) -> type[OpskitError]:
    """Return the opskit error for a failed ``flyway <command>``: by Flyway's error code, else by the command.

    A failure Flyway reports before it can print JSON (a bad configuration, an old release whose JSON
    has no ``errorCode``) leaves its message as the only signal that validation is what failed.
    Every command without a kind of its own fails with MigrationFailed (exit 4): info, baseline
    and repair work on the schema history as migrate does.
    """
    if isinstance(code, str) and code:
        if code in VALIDATION_ERROR_CODES:
            return VerificationFailed
        if code in _CODE_KINDS:
            return _CODE_KINDS[code]
    elif "validat" in message.lower():
        return VerificationFailed
    return _KIND_BY_COMMAND.get(command, MigrationFailed)


def migrate(target: TargetConfig, settings: MigrationSettings, dry_run: bool = False) -> MigrateReport:
    """Run ``flyway migrate`` (``info`` for a dry run) and return what it applied."""
    if dry_run:
        document = run_flyway("info", target, settings)
        report = MigrateReport(document.get("schemaVersion"), None, dry_run=True)
        for m in document.get("migrations", []):
            if m.get("state") == "Pending":
                report.applied.append(_applied(m))
        return report
    document = run_flyway("migrate", target, settings)
    report = MigrateReport(document.get("initialSchemaVersion"), document.get("targetSchemaVersion"))
    report.applied = [_applied(m) for m in document.get("migrations", [])]
    report.warnings = list(document.get("warnings") or [])
    return report


def _applied(m: dict[str, Any]) -> Applied:
    version = m.get("version") or None
    filepath = m.get("filepath") or ""
    return Applied(
        m.get("category") or ("Versioned" if version else "Repeatable"),
        version,
        m.get("rawVersion"),
        m.get("description", ""),
        os.path.basename(filepath),
        filepath,
        int(m.get("executionTime") or 0),
    )


def info(target: TargetConfig, settings: MigrationSettings) -> InfoOutcome:
    """Run ``flyway info`` and return an InfoOutcome carrying Flyway's own document."""
    document = run_flyway("info", target, settings)
    return InfoOutcome(
        target.name,
        InfoState([]),
        document.get("schemaName", ""),
        document.get("database", ""),
        bool(document.get("allSchemasEmpty")),
        None,
        flyway_document=document,
    )


def validate(target: TargetConfig, settings: MigrationSettings) -> InfoState:
    """Run ``flyway validate``. Raises MigrationValidationFailed (exit 5) with Flyway's messages."""
    document = run_flyway("validate", target, settings)
    if document.get("validationSuccessful") is False:
        messages = [
            str((m.get("errorDetails") or {}).get("errorMessage", "")) for m in document.get("invalidMigrations", [])
        ]
        raise MigrationValidationFailed(
            "Validate failed: Migrations have failed validation\n" + "\n".join(messages), errors=messages
        )
    return InfoState([])


def baseline(
    target: TargetConfig, settings: MigrationSettings, version: str | None, description: str | None
) -> BaselineReport:
    """Run ``flyway baseline``."""
    extra = [f"-baselineVersion={version}"] if version else []
    if description:
        extra.append(f"-baselineDescription={description}")
    document = run_flyway("baseline", target, settings, extra)
    return BaselineReport(
        str(document.get("baselineVersion") or version or settings.baseline_version),
        description or settings.baseline_description,
        bool(document.get("successfullyBaselined")),
    )


def repair(target: TargetConfig, settings: MigrationSettings) -> RepairReport:
    """Run ``flyway repair``."""
    document = run_flyway("repair", target, settings)
    return RepairReport(actions=[str(a) for a in document.get("repairActions", [])])


class FlywayCliBackend:
    """The :class:`~opskit.flyway.backend.MigrationBackend` that runs a real ``flyway`` binary.

    It cannot take a pre-migrate backup or rehearse (those need the built-in engine's plan), so
    ``supports_guarded_runs`` is False.
    """

    supports_guarded_runs = False

    def __init__(self, settings: MigrationSettings) -> None:
        self.settings = settings

    def info(self, target: TargetConfig) -> InfoOutcome:
        """Return Flyway's ``info``. Raises UnreachableError, ConfigError, OpskitError."""
        return info(target, self.settings)

    def validate(self, target: TargetConfig) -> InfoState:
        """Run ``flyway validate``. Raises MigrationValidationFailed (exit 5) with Flyway's messages."""
        return validate(target, self.settings)

    def migrate(
        self, target: TargetConfig, *, dry_run: bool = False, on_applied: Callable[[Applied], None] | None = None
    ) -> MigrateReport:
        """Run ``flyway migrate`` (``info`` for a dry run) and return what it applied.

        ``on_applied`` is not called: Flyway reports its migrations only when the whole run is over.
        Raises MigrationFailed, VerificationFailed, UnreachableError, ConfigError.
        """
        return migrate(target, self.settings, dry_run=dry_run)

    def baseline(self, target: TargetConfig, version: str | None, description: str | None) -> BaselineReport:
        """Run ``flyway baseline``. Raises VerificationFailed, OpskitError."""
        return baseline(target, self.settings, version, description)

    def repair(self, target: TargetConfig) -> RepairReport:
        """Run ``flyway repair``. Raises OpskitError."""
        return repair(target, self.settings)
