"""Validation of a migration state: Flyway's ``validate`` messages, computed without a database.

``validation_errors`` walks the infos of a state in order and returns the message Flyway gives
for each invalid one (``docs/flyway-compat.md`` §4.2); ``ignoreMigrationPatterns`` decide which
states are forgiven. ``check_target`` refuses a target version no migration has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from opskit.core.errors import ConfigError, MigrationValidationFailed
from opskit.flyway.names import abbreviate_description
from opskit.flyway.state import (
    ABOVE_TARGET,
    DELETED,
    FAILED_STATES,
    FUTURE,
    FUTURE_FAILED,
    IGNORED,
    OUTDATED,
    PENDING,
    SUPERSEDED,
    Info,
    InfoState,
    Target,
)


def pattern_matches(patterns: Iterable[str], info: Info) -> bool:
    """Return True when an ``ignoreMigrationPatterns`` entry (``kind:state``) matches the info's state."""
    for pattern in patterns:
        kind, _, state = pattern.lower().partition(":")
        kind_ok = kind == "*" or (kind == "repeatable") == info.is_repeatable
        if kind_ok and (state == "*" or state == info.state.lower()):
            return True
    return False


def state_ignored(patterns: Iterable[str], state_name: str, repeatable: bool) -> bool:
    """Return True when a pattern forgives ``state_name`` (lowercase) for repeatable or versioned migrations."""
    for pattern in patterns:
        kind, _, state = pattern.lower().partition(":")
        if (kind == "*" or (kind == "repeatable") == repeatable) and state in ("*", state_name):
            return True
    return False


def validation_errors(state: InfoState, patterns: Sequence[str]) -> list[str]:
    """Return Flyway's validation messages for every invalid migration, in info order (§4.2)."""
    errors: list[str] = []
    ok_always = (ABOVE_TARGET, DELETED)
    for info in state.infos:
        if info.state in ok_always or pattern_matches(patterns, info):
            continue
        repeatable = info.is_repeatable
        future_ignored = state_ignored(patterns, "future", repeatable)
        if info.state in FAILED_STATES and not (info.state == FUTURE_FAILED and future_ignored):
            if repeatable:
                errors.append(
                    f"Detected failed repeatable migration: {info.description}.\nPlease remove any "
                    "half-completed changes then run repair to fix the schema history."
                )
            else:
                errors.append(
                    f"Detected failed migration to version {info.version_text} ({info.description}).\n"
                    "Please remove any half-completed changes then run repair to fix the schema history."
                )
            continue
        if (
            info.applied is not None
            and info.resolved is None
            and not info.is_synthetic
            and info.state not in (SUPERSEDED, FUTURE_FAILED)
        ):
            if info.state == FUTURE and future_ignored:
                continue
            errors.append(
                f"Detected applied migration not resolved locally: {info.label}.\nIf you removed this "
                "migration intentionally, run repair to mark the migration as deleted."
            )
            continue
        pending_ignored = state_ignored(patterns, "pending", repeatable)
        if info.state == IGNORED:
            errors.append(
                f"Detected resolved migration not applied to database: {info.label}.\nTo ignore this "
                "migration, set -ignoreMigrationPatterns='*:ignored'. To allow executing this migration, "
                "set -outOfOrder=true."
            )
            continue
        if info.state == PENDING and not pending_ignored:
            errors.append(
                f"Detected resolved migration not applied to database: {info.label}.\nTo fix this error, "
                "either run migrate, or set -ignoreMigrationPatterns='*:pending'."
            )
            continue
        if info.state == OUTDATED and not pending_ignored:
            errors.append(
                f"Detected outdated resolved repeatable migration that should be re-applied to database: "
                f"{info.description}.\nRun migrate to execute this migration."
            )
            continue
        if info.applied is None or info.resolved is None or info.is_synthetic:
            continue
        version = info.applied.parsed_version
        if version is not None and state.baseline is not None and not version > state.baseline:
            continue
        error = _mismatch(info)
        if error:
            errors.append(error)
    return errors


def _mismatch(info: Info) -> str | None:
    """Return the type, checksum or description mismatch message of an applied and resolved info, or None."""
    row, resolved = info.applied, info.resolved
    assert row is not None and resolved is not None
    what = f"version {row.version}" if row.version else f"description {row.description}"
    tail = "\nEither revert the changes to the migration, or run repair to update the schema history."
    if row.type != "SQL":
        return (
            f"Migration type mismatch for migration {what}\n-> Applied to database : {row.type}\n"
            f"-> Resolved locally    : SQL{tail}"
        )
    if row.version is not None and row.checksum is not None and not resolved.checksum_matches(row.checksum):
        return (
            f"Migration checksum mismatch for migration {what}\n-> Applied to database : {row.checksum}\n"
            f"-> Resolved locally    : {resolved.checksum}{tail}"
        )
    if abbreviate_description(resolved.description) != row.description:
        return (
            f"Migration description mismatch for migration {what}\n-> Applied to database : {row.description}\n"
            f"-> Resolved locally    : {resolved.description}{tail}"
        )
    return None


def validation_failed(errors: Sequence[str]) -> MigrationValidationFailed:
    """Return the error Flyway's validate raises (exit 5), with every message in ``errors``."""
    return MigrationValidationFailed(
        "Validate failed: Migrations have failed validation\n" + "\n".join(errors),
        hint="see 'opskit migrate info'",
        errors=errors,
    )


def check_target(state: InfoState, target: Target) -> None:
    """Raise ConfigError when ``target`` names a version no migration has (unless it is optional, ``V?``)."""
    if target.kind != "version" or target.optional or target.version is None:
        return
    known = {i.version for i in state.infos if i.version is not None}
    if target.version not in known:
        raise ConfigError(
            f"No migration with a target version {target.version} could be found. Ensure target is specified "
            "correctly and the migration exists.",
            hint="fix --to-version (or migrations.target), or append '?' to allow a missing target",
        )
