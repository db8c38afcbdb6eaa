"""How a runbook ``opskit`` step shows an action's result: one function per action, named in :mod:`opskit.actions`.

Each returns the step's output text (kept in the transcript). The result types are imported
for type checking only: rendering a status needs no verify code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opskit.ops.status import StatusReport
    from opskit.restore.verify import VerifyReport
    from opskit.runbooks.restore_globals import GlobalsReplay

GLOBALS_ERROR_LINES = 20  # error lines kept in the step output; a new server may report one per existing role


def verify_summary(report: VerifyReport) -> str:
    """Return one line per verified backup (``id: verdict (level)``), or "nothing verified"."""
    return "\n".join(f"{v.backup_id}: {v.verdict} ({v.level})" for v in report.verifications) or "nothing verified"


def status_summary(report: StatusReport) -> str:
    """Return one line per target: its recovery point objective, explained."""
    return "\n".join(f"{t.target}: {t.rpo.explain()}" for t in report.targets)


def restore_globals_summary(replay: GlobalsReplay) -> str:
    """Return which backup's globals went where, and the first error lines (existing roles are expected)."""
    summary = f"replayed the globals of backup {replay.backup_id} onto target '{replay.to}'"
    if replay.errors:
        summary += f"; {len(replay.errors)} error line(s) (roles that already exist are expected):\n" + "\n".join(
            replay.errors[:GLOBALS_ERROR_LINES]
        )
    return summary
