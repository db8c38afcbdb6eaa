"""What ``repair`` changes, decided from a migration state without a database (``docs/flyway-compat.md`` §4.5)."""

from __future__ import annotations

from collections.abc import Sequence

from opskit.flyway.names import abbreviate_description
from opskit.flyway.state import (
    DELETED,
    FAILED_STATES,
    FUTURE,
    FUTURE_FAILED,
    IGNORED,
    MISSING,
    MISSING_FAILED,
    Info,
    InfoState,
)
from opskit.flyway.validation import pattern_matches

_MISSING_STATES = (MISSING, MISSING_FAILED, FUTURE, FUTURE_FAILED)


def failed_rows(state: InfoState) -> list[Info]:
    """Return the applied rows in a failed state: repair deletes them."""
    return [info for info in state.infos if info.state in FAILED_STATES and info.applied is not None]


def missing_rows(state: InfoState, patterns: Sequence[str]) -> list[Info]:
    """Return the applied rows with no script that no ignore pattern keeps: repair writes a DELETE marker for each."""
    return [
        info
        for info in state.infos
        if info.applied is not None
        and not info.is_synthetic
        and info.state in _MISSING_STATES
        and not pattern_matches(patterns, info)
    ]


def misaligned_rows(state: InfoState) -> list[Info]:
    """Return the paired rows whose stored checksum, description or type repair realigns with the script.

    A versioned row is realigned when any of the three differs; a repeatable only when it stores
    the raw checksum where the placeholder-replaced one belongs (a row from before Flyway 6.3).
    """
    chosen: list[Info] = []
    for info in state.infos:
        row, resolved = info.applied, info.resolved
        if row is None or resolved is None or info.is_synthetic or info.state in (DELETED, IGNORED):
            continue
        if row.version is not None:
            description = abbreviate_description(resolved.description)
            if row.checksum == resolved.checksum and row.description == description and row.type == "SQL":
                continue
        elif not (row.checksum == resolved.equivalent_checksum and row.checksum != resolved.checksum):
            continue
        chosen.append(info)
    return chosen
