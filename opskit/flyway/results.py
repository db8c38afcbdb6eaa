"""What the migration commands return, whichever backend ran them (the built-in engine or Flyway's CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opskit.flyway.state import Info, InfoState


@dataclass(frozen=True)
class Applied:
    """One migration the run applied (or, in a dry run, would apply)."""

    category: str
    version: str | None
    raw_version: str | None
    description: str
    script: str
    filepath: str
    execution_ms: int
    transactional: bool = True
    refusal: str | None = None  # dry run: why opskit would refuse to run it (a mixed script), else None


@dataclass
class MigrateReport:
    """What ``migrate`` did."""

    initial_version: str | None
    target_version: str | None
    applied: list[Applied] = field(default_factory=list)
    dry_run: bool = False
    baselined: bool = False
    created_table: bool = False
    created_schemas: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Return how many migrations ran (or would run)."""
        return len(self.applied)

    @property
    def refused(self) -> list[Applied]:
        """Return the planned migrations opskit refuses to run (a dry run's finding), in order."""
        return [a for a in self.applied if a.refusal is not None]


@dataclass
class RepairReport:
    """What ``repair`` changed."""

    actions: list[str] = field(default_factory=list)
    removed: list[Info] = field(default_factory=list)
    deleted: list[Info] = field(default_factory=list)
    aligned: list[Info] = field(default_factory=list)


@dataclass(frozen=True)
class BaselineReport:
    """What ``baseline`` did."""

    version: str
    description: str
    created: bool  # False when the same baseline was already there


@dataclass(frozen=True)
class InfoOutcome:
    """``migrate info``: the state plus what the JSON document needs.

    ``flyway_document`` is set by the Flyway CLI backend: Flyway's own ``info`` JSON, printed as
    it is; the built-in engine leaves it None and the document is built from ``state``.
    """

    target: str
    state: InfoState
    schema_name: str
    database: str
    all_schemas_empty: bool
    session_timezone: str | None
    flyway_document: dict[str, Any] | None = None
