"""The outcome of one drill: the backup it picked, its phases and checks, objectives, and the JSON report."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opskit import __version__, catalog
from opskit.catalog import Check, Manifest
from opskit.core.errors import ObjectiveBreached, VerificationFailed
from opskit.drill.timing import PhaseTiming, measured_rto
from opskit.plan import objectives

REPORT_FORMAT = 1
PASS = "pass"
FAIL = "fail"


@dataclass
class DrillReport:
    """Everything one drill found. ``to_dict()`` is the stored JSON report.

    ``restored`` says the restore finished (a database to check exists): only then was an RTO
    measured, and only then is ``rto`` set. A drill stopped by a pre-check or a failed restore
    reports its RTO as not measured, never as met.
    """

    drill_id: str
    trigger: str
    target: str
    staging_target: str
    staging_database: str
    started_at: datetime
    finished_at: datetime | None = None
    manifest: Manifest | None = None
    storage: str = ""
    phases: list[PhaseTiming] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    allowed_errors: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    rpo_target: timedelta = timedelta(hours=1)
    rto: objectives.RtoAssessment | None = None
    cleanup: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)
    restored: bool = False
    # A PITR drill (opskit/drill/pitr.py): the moment asked for, the window, the point reached,
    # the scratch server. None for a logical drill.
    pitr: dict[str, Any] | None = None
    # Its recovery point is the end of the WAL archive, not the base backup's snapshot.
    recovery_point: datetime | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}: checks that do not apply

    @property
    def passed(self) -> bool:
        """Return True when there were checks and every one passed."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        """Return ``pass`` or ``fail`` (the checks only; objectives are reported separately)."""
        return PASS if self.passed else FAIL

    @property
    def data_loss(self) -> timedelta | None:
        """Return drill start - the recovery point (the backup's; for a PITR drill, the newest archived WAL)."""
        if self.recovery_point is not None:
            return self.started_at - self.recovery_point
        return self.started_at - self.manifest.snapshot_time if self.manifest else None

    @property
    def measured_rto(self) -> timedelta | None:
        """Return the RTO phases' wall time (timing.RTO_PHASES), or None when the restore did not finish."""
        return measured_rto(self.phases) if self.restored else None

    @property
    def breaches(self) -> list[str]:
        """Return one sentence per breached objective (data-loss window > RPO, estimated RTO > RTO)."""
        found = []
        loss = self.data_loss
        if loss is not None and objectives.rpo_status(loss, self.rpo_target) == objectives.BREACHED:
            found.append(
                f"RPO breached: the backup's recovery point is {objectives.short(loss)} old, "
                f"target {objectives.short(self.rpo_target)}"
            )
        if self.rto is not None and self.rto.status == objectives.BREACHED:
            found.append(
                f"RTO breached: estimated {objectives.short(self.rto.estimated)} "
                f"(measured {objectives.short(self.rto.measured)} + allowances "
                f"{objectives.short(self.rto.allowances)}), target {objectives.short(self.rto.target)}"
            )
        return found

    @property
    def exit_code(self) -> int:
        """Return 0 when everything passed, 5 when a check failed, 6 when only an objective was breached."""
        if not self.passed:
            return VerificationFailed.exit_code
        if self.breaches:
            return ObjectiveBreached.exit_code
        return 0

    def raise_for_verdict(self) -> None:
        """Raise VerificationFailed (5) for a failed check, ObjectiveBreached (6) for a breach."""
        failed = [c for c in self.checks if not c.ok]
        if failed or not self.checks:
            names = ", ".join(c.name for c in failed) or "no check ran"
            raise VerificationFailed(
                f"drill {self.drill_id} of target '{self.target}' failed: {names}",
                hint="read the drill report" + (f" ({self.reports['markdown']})" if "markdown" in self.reports else ""),
            )
        if self.breaches:
            raise ObjectiveBreached(
                f"drill {self.drill_id} of target '{self.target}' passed its checks, but " + "; ".join(self.breaches),
                hint="back up more often, or restore faster (drill.jobs above 1 on a host with spare cores, a closer storage)",
            )

    def raise_for_outcome(self) -> None:
        """The name every action result shares (the daemon calls it): see :meth:`raise_for_verdict`."""
        self.raise_for_verdict()

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON report: every field of docs/operations.md §3."""
        manifest = self.manifest
        db = manifest.artifact(catalog.DUMP_ARTIFACT) if manifest else None
        loss = self.data_loss
        return {
            "format_version": REPORT_FORMAT,
            "kind": "drill",
            "drill_id": self.drill_id,
            "trigger": self.trigger,
            "opskit_version": __version__,
            "target": self.target,
            "backup": {
                "id": manifest.id if manifest else None,
                "storage": self.storage,
                "snapshot_time": catalog.format_time(manifest.snapshot_time) if manifest else None,
                "size": manifest.size if manifest else None,
                "sha256": db.sha256 if db else None,
                "database": manifest.database if manifest else None,
                "migration_version": manifest.migration_version if manifest else None,
            },
            "staging": {"target": self.staging_target, "database": self.staging_database},
            "started_at": catalog.format_time(self.started_at),
            "finished_at": catalog.format_time(self.finished_at) if self.finished_at else None,
            "phases": [p.to_dict() for p in self.phases],
            "checks": [c.to_drill_dict() for c in self.checks],
            "skipped_checks": self.skipped,
            "mode": "pitr" if self.pitr is not None else "logical",
            "pitr": self.pitr,
            "pg_restore_errors": {"allowed": self.allowed_errors, "unexpected": self.unexpected_errors},
            "data_loss_seconds": loss.total_seconds() if loss is not None else None,
            "rpo": {
                "data_loss_seconds": loss.total_seconds() if loss is not None else None,
                "target_seconds": self.rpo_target.total_seconds(),
                "status": objectives.rpo_status(loss, self.rpo_target) if loss is not None else None,
            },
            "rto": self._rto_dict(),
            "verdict": self.verdict,
            "objectives_met": not self.breaches,
            "breaches": self.breaches,
            "warnings": self.warnings,
            "cleanup": self.cleanup,
            "reports": self.reports,
        }

    def _rto_dict(self) -> dict[str, Any]:
        """Return the report's ``rto`` object; without a finished restore, no figures and status "not measured"."""
        rto = self.rto
        if rto is None or not self.restored:
            return {
                "measured_seconds": None,
                "allowances_seconds": rto.allowances.total_seconds() if rto else None,
                "estimated_seconds": None,
                "target_seconds": rto.target.total_seconds() if rto else None,
                "status": catalog.RTO_UNMEASURED,
                "reason": "the restore did not finish: no RTO was measured",
            }
        return {
            "measured_seconds": round(rto.measured.total_seconds(), 3),
            "allowances_seconds": rto.allowances.total_seconds(),
            "estimated_seconds": round(rto.estimated.total_seconds(), 3),
            "target_seconds": rto.target.total_seconds(),
            "status": rto.status,
        }
