"""The outcome of one restore, shared by the streaming route (``restore``) and the parallel ones (``parallel``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from opskit.catalog import Manifest
from opskit.pg import facts


@dataclass
class RestoreResult:
    """A finished restore: where it went, how long each phase took, and the row-count check."""

    manifest: Manifest
    storage: str
    server: str  # the destination target's name ("--to" for an ad-hoc DSN)
    database: str
    created: bool
    jobs: int
    phases: dict[str, float] = field(default_factory=dict)
    # CPU seconds of opskit's own process per stage (download, hashes, age, zstd, the loader's threads).
    cpu: dict[str, float] = field(default_factory=dict)
    mismatches: list[facts.RowMismatch] = field(default_factory=list)
    tables_checked: int = 0
    pg_restore_errors: list[str] = field(default_factory=list)
    bytes_restored: int = 0
    route: str = "stream"  # "stream" (--jobs 1), "loader" or "spool" (see restore_parallel)
    # Rows each table received, as PostgreSQL reported its COPYs ("schema.table" -> rows); loader route only.
    rows_loaded: dict[str, int] | None = None
    # --replace: the old database's name when it was kept aside (--keep-old, or its drop failed).
    kept_old: str | None = None
    # --clean: tables of the destination the backup does not hold (left as they were, not compared).
    extra_tables: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True when every table's row count matches the manifest."""
        return not self.mismatches


def failure_note(database: str, created: bool, clean: bool) -> str:
    """Return what a failed restore left of ``database``, for the hint after its error line.

    ``created``: the run made the database (and drops it again); ``clean``: it restored over an
    existing one in one transaction (rolled back); otherwise it restored into an existing empty one.
    """
    if created:
        return "a database this run created was dropped"
    if clean:
        return f"'{database}' was left as it was (--clean restores in one transaction, rolled back)"
    return f"'{database}' may hold part of the backup now: drop and recreate it, or restore again with --clean"


def clean_lock_advice(clean: bool, stderr: str) -> str:
    """Return the way out when a --clean restore ran out of the server's lock table ("" otherwise).

    --clean restores in one transaction, which holds a lock on every object it drops and
    creates until it commits: some 800 tables, or ~10,000 large objects, exceed the default
    lock table (max_locks_per_transaction 64 x max_connections 100).
    """
    if not clean or "max_locks_per_transaction" not in stderr:  # PostgreSQL's HINT for "out of shared memory"
        return ""
    return (
        "; --clean restores in one transaction and this backup has more objects than the server's lock table "
        "holds: restore with --replace (a new database, swapped in once it is proven), or raise "
        "max_locks_per_transaction on the server (a restart) and run it again"
    )
