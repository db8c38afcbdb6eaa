"""Carrying out ``repair`` on the history table (``docs/flyway-compat.md`` §4.5).

:mod:`opskit.flyway.repair` decides, without a database, which rows repair touches; this
module writes those changes in the order Flyway makes them: failed rows removed, missing
migrations marked deleted, checksums (and descriptions) realigned. The caller holds the lock
and the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from opskit.flyway.history import HistoryTable, NewRow
from opskit.flyway.names import abbreviate_description
from opskit.flyway.repair import failed_rows, misaligned_rows, missing_rows
from opskit.flyway.results import RepairReport
from opskit.flyway.state import InfoState


def run_repair(
    conn: psycopg.Connection[Any],
    history: HistoryTable,
    read_state: Callable[[], InfoState],
    ignore_patterns: Sequence[str],
    installed_by: str,
) -> RepairReport:
    """Repair ``history``; ``read_state`` returns the current state (read again after failed rows go).

    Raises psycopg.Error.
    """
    report = RepairReport()
    state = read_state()
    for info in failed_rows(state):
        if info.applied is not None:
            history.delete_failed(conn, info.applied)
            report.removed.append(info)
    if report.removed:
        report.actions.append("Removed failed migrations")
        state = read_state()
    for info in missing_rows(state, ignore_patterns):
        row = info.applied
        assert row is not None  # missing_rows returns applied rows only
        history.insert(
            conn,
            NewRow(row.version, row.description, "DELETE", row.script, row.checksum, installed_by, 0, row.success),
        )
        report.deleted.append(info)
    if report.deleted:
        report.actions.append("Marked missing migrations as deleted")
    for info in misaligned_rows(state):
        row, resolved = info.applied, info.resolved
        assert row is not None and resolved is not None  # misaligned_rows returns paired rows only
        history.realign(
            conn,
            row.installed_rank,
            abbreviate_description(resolved.description),
            row.type if row.is_synthetic else "SQL",
            resolved.checksum,
        )
        report.aligned.append(info)
    if report.aligned:
        report.actions.append("Aligned applied migration checksums")
    return report
