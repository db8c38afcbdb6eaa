"""What every drill does at its end, logical or PITR: weigh the objectives, store the reports, record the verdict.

Reports go next to the backups, ``<target>/drills/<drill_id>.json|.md|.html`` (where ``status``
finds the newest drill), and to the report directory when one is given. The verdict is also
recorded as a verification of the backup (kind ``drill``), so retention keeps the newest
backup that passed one. A storage failure in either is a warning: the verdict stands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from opskit import catalog
from opskit.catalog import Check
from opskit.context import AppContext
from opskit.core.errors import OpskitError
from opskit.core.log import get_logger
from opskit.drill import report
from opskit.drill.result import DrillReport
from opskit.drill.timing import PhaseClock
from opskit.plan import objectives
from opskit.storage.base import Storage, join_key

log = get_logger(__name__)


def finish(
    ctx: AppContext, store: Storage, result: DrillReport, clock: PhaseClock, report_dir: str | Path | None
) -> None:
    """Assess RTO and RPO, stamp the finish time, write the reports, record the verdict and log it (in that order)."""
    assess_objectives(ctx, result)
    result.finished_at = result.started_at + timedelta(seconds=clock.elapsed())
    write_reports(store, result, report_dir)
    record_verdict(store, result, ctx.clock)
    measured = result.measured_rto
    log.info(
        "drill finished",
        target=result.target,
        drill_id=result.drill_id,
        mode="pitr" if result.pitr is not None else "logical",
        verdict=result.verdict,
        breaches=len(result.breaches),
        measured_rto=round(measured.total_seconds(), 2) if measured is not None else None,
    )


def assess_objectives(ctx: AppContext, result: DrillReport) -> None:
    """Set ``result.rto`` from the measured phases; add a warning for an RTO or RPO at 80% of its target."""
    measured = result.measured_rto
    # Only a restore that finished measures an RTO; without one there is nothing to compare.
    result.rto = (
        None
        if measured is None
        else objectives.RtoAssessment(
            measured=measured, allowances=ctx.config.objectives.allowances, target=ctx.config.objectives.rto
        )
    )
    if result.rto is not None and result.rto.status == objectives.WARN:
        result.warnings.append(
            f"estimated RTO {objectives.short(result.rto.estimated)} is at least 80% of the target "
            f"{objectives.short(result.rto.target)}"
        )
    loss = result.data_loss
    if loss is not None and objectives.rpo_status(loss, result.rpo_target) == objectives.WARN:
        result.warnings.append(f"data-loss window {objectives.short(loss)} is at least 80% of the RPO target")


def write_reports(store: Storage, result: DrillReport, report_dir: str | Path | None) -> None:
    """Store JSON, Markdown and HTML next to the backups, and in ``report_dir`` when given.

    A storage failure here is a warning: the drill's verdict stands and is still printed.
    """
    base = join_key(catalog.drills_prefix(result.target), result.drill_id)
    result.reports = {
        "json": f"{store.name}:{base}.json",
        "markdown": f"{store.name}:{base}.md",
        "html": f"{store.name}:{base}.html",
    }
    directory = Path(report_dir) if report_dir else None
    if directory is not None:
        result.reports["local_dir"] = str(directory)
    data = result.to_dict()
    rendered = {
        "json": report.to_json(data),
        "md": report.to_markdown(data).encode("utf-8"),
        "html": report.to_html(data).encode("utf-8"),
    }
    try:
        catalog.write_drill_report(store, result.target, result.drill_id, rendered)
    except OpskitError as exc:
        result.warnings.append(f"storing the drill report in '{store.name}' failed: {exc.message}")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        for ext, payload in rendered.items():
            (directory / f"{result.drill_id}.{ext}").write_bytes(payload)


def record_verdict(store: Storage, result: DrillReport, clock: Callable[[], datetime]) -> None:
    """Record the drill as a verification of the backup, so retention keeps the newest drilled backup.

    A storage failure here is a warning: the drill's verdict stands (so is a running prune's
    repository lock: the record is written under a shared lock, never beside a prune).
    """
    if result.manifest is None:
        return
    record = catalog.Verification(
        target=result.target,
        backup_id=result.manifest.id,
        storage=store.name,
        time=result.started_at,
        kind="drill",
        level="restore",
        verdict=result.verdict,
        checks=tuple(_as_verification_check(c) for c in result.checks),
    )
    try:
        with catalog.locked(store, result.target, "drill", clock=clock):
            catalog.record_verification(store, record)
    except OpskitError as exc:
        result.warnings.append(f"recording the drill verdict next to the backup failed: {exc.message}")


def _as_verification_check(check: Check) -> Check:
    """Return ``check`` as verification records have always stored a drill's checks.

    Their subject is the artifact the drill restored (``db``), not the drill's phase, and lists
    or dicts are stored as their text, so records written before and after read the same.
    """
    return dataclasses.replace(
        check, subject=catalog.DUMP_ARTIFACT, expected=_plain(check.expected), actual=_plain(check.actual)
    )


def _plain(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
