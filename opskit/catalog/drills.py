"""Drill reports: ``<target>/drills/<drill_id>.json`` (+ ``.md``, ``.html``), and the newest drill.

The drill feature renders its report and stores it with :func:`write_drill_report`; status and
metrics read it back as a :class:`DrillRecord` (the fields they need, with one spelling each),
never as raw JSON. Drill ids start with the drill's UTC start time, so key order is time order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from opskit.catalog.layout import drill_report_key, drills_prefix, format_time, parse_time
from opskit.catalog.objects import JsonValue, read_json
from opskit.core.errors import ManifestError, ObjectNotFound
from opskit.storage.base import Storage

DRILL_PASS = "pass"
DRILL_FAIL = "fail"
REPORT_KIND = "drill"
RTO_UNMEASURED = "not measured"  # rto.status of a drill whose restore did not finish

# Verdicts written by early drill reports and by hand-made or imported ones; read as "pass" here,
# once, so no reader compares spellings. opskit itself has only ever written "pass" and "fail".
_LEGACY_PASS_VERDICTS = frozenset({"pass", "passed", "ok", "success", "succeeded"})


@dataclass(frozen=True)
class DrillRecord:
    """What a stored drill report says, as status and metrics read it.

    Times are None when the report lacks them (a report has at least one of the two);
    durations are seconds, None when the report did not measure them (the RTO figures are
    None, and ``rto_status`` is ``not measured``, for a drill whose restore did not finish).
    """

    drill_id: str
    target: str
    backup_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    verdict: str  # DRILL_PASS or DRILL_FAIL
    objectives_met: bool | None = None
    measured_rto_seconds: float | None = None
    rto_allowances_seconds: float | None = None
    estimated_rto_seconds: float | None = None
    rto_target_seconds: float | None = None
    rto_status: str | None = None
    data_loss_seconds: float | None = None
    key: str = ""

    @property
    def passed(self) -> bool:
        """Return True when every check of the drill passed."""
        return self.verdict == DRILL_PASS

    @property
    def finished(self) -> datetime:
        """Return when the drill finished, or its start when the report has no finish time."""
        moment = self.finished_at or self.started_at
        assert moment is not None  # from_report refuses a report with neither
        return moment

    @property
    def sort_key(self) -> tuple[datetime, str]:
        """Return the key that orders drills oldest to newest: start time (else finish), then id."""
        moment = self.started_at or self.finished_at
        assert moment is not None
        return moment, self.drill_id

    def rto_summary(self) -> dict[str, float | str | None]:
        """Return the report's RTO figures with the stored report's key names."""
        return {
            "measured_seconds": self.measured_rto_seconds,
            "allowances_seconds": self.rto_allowances_seconds,
            "estimated_seconds": self.estimated_rto_seconds,
            "target_seconds": self.rto_target_seconds,
            "status": self.rto_status,
        }

    def summary(self) -> dict[str, object]:
        """Return the JSON-ready summary ``status`` shows for the last drill."""
        return {
            "drill_id": self.drill_id,
            "started_at": format_time(self.started_at) if self.started_at else None,
            "finished_at": format_time(self.finished_at) if self.finished_at else None,
            "backup_id": self.backup_id,
            "verdict": self.verdict,
            "objectives_met": self.objectives_met,
            "rto": self.rto_summary(),
            "data_loss_seconds": self.data_loss_seconds,
        }

    @classmethod
    def from_report(cls, report: JsonValue, key: str = "") -> DrillRecord | None:
        """Return the record of a stored drill report, or None when ``report`` is not one.

        Not a report: not a JSON object, a ``kind`` other than ``drill``, or no readable
        start or finish time. Older spellings are read here and nowhere else: the finish
        time as ``ended_at``, the verdict as a boolean ``passed`` or ``passed``/``ok``/
        ``success``/``succeeded``, the estimated RTO as ``estimated_rto_seconds`` or
        ``objectives.rto.estimated_seconds``, the data-loss window under ``rpo`` or
        ``objectives.rpo``. Reports written before opskit knew that only a finished restore
        measures an RTO stored figures for drills that restored nothing: a report whose phases
        lack ``verify`` (the phase after a finished restore) is read as measuring no RTO.
        """
        if not isinstance(report, Mapping) or report.get("kind", REPORT_KIND) != REPORT_KIND:
            return None
        started_at = _time(report.get("started_at"))
        finished_at = _time(report.get("finished_at") or report.get("ended_at"))
        if started_at is None and finished_at is None:
            return None
        verdict = report.get("verdict", report.get("passed"))
        passed = verdict is True or (isinstance(verdict, str) and verdict.lower() in _LEGACY_PASS_VERDICTS)
        backup = report.get("backup")
        backup_id = backup.get("id") if isinstance(backup, Mapping) else None
        objectives_met = report.get("objectives_met")
        rto_status = _path(report, "rto.status")
        phases = report.get("phases")
        restored = not isinstance(phases, list) or any(
            isinstance(p, Mapping) and p.get("name") == "verify" for p in phases
        )
        if not restored or rto_status == RTO_UNMEASURED:
            rto_status, measured, estimated = RTO_UNMEASURED, None, None
        else:
            measured = _number(report, "rto.measured_seconds")
            estimated = _number(
                report,
                "rto.estimated_seconds",
                "estimated_rto_seconds",
                "rto.estimated",
                "objectives.rto.estimated_seconds",
            )
        return cls(
            drill_id=str(report.get("drill_id") or key.rsplit("/", 1)[-1].removesuffix(".json")),
            target=str(report.get("target", "")),
            backup_id=str(backup_id) if backup_id is not None else None,
            started_at=started_at,
            finished_at=finished_at,
            verdict=DRILL_PASS if passed else DRILL_FAIL,
            objectives_met=objectives_met if isinstance(objectives_met, bool) else None,
            measured_rto_seconds=measured,
            rto_allowances_seconds=_number(report, "rto.allowances_seconds"),
            estimated_rto_seconds=estimated,
            rto_target_seconds=_number(report, "rto.target_seconds"),
            rto_status=rto_status if isinstance(rto_status, str) else None,
            data_loss_seconds=_number(
                report, "data_loss_seconds", "rpo.data_loss_seconds", "objectives.rpo.data_loss_seconds"
            ),
            key=key,
        )


def _time(value: JsonValue) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _path(data: Mapping[str, JsonValue], path: str) -> JsonValue:
    value: JsonValue = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _number(data: Mapping[str, JsonValue], *paths: str) -> float | None:
    """Return the first of ``paths`` (dotted) that holds a number, as a float; None when none does."""
    for path in paths:
        value = _path(data, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


# --------------------------------------------------------------------------- storage


def write_drill_report(storage: Storage, target: str, drill_id: str, renderings: Mapping[str, bytes]) -> list[str]:
    """Store each rendering of a drill report (``{"json": ..., "md": ..., "html": ...}``); return the keys.

    The JSON rendering is the record :func:`latest_drill` reads back. Raises StorageError at
    the first rendering that cannot be written.
    """
    keys = []
    for extension, payload in renderings.items():
        key = drill_report_key(target, drill_id, extension)
        with storage.writer(key) as out:
            out.write(payload)
        keys.append(key)
    return keys


def _report_keys(storage: Storage, target: str) -> list[str]:
    """Return the keys of the JSON drill reports of ``target``, newest first."""
    prefix = drills_prefix(target) + "/"
    return sorted((info.key for info in storage.list(prefix) if info.key.endswith(".json")), reverse=True)


def _read_drill(storage: Storage, key: str) -> DrillRecord | None:
    try:
        return DrillRecord.from_report(read_json(storage, key), key)
    except (ManifestError, ObjectNotFound):
        return None  # broken, or deleted since the listing: not a report to trust


def list_drills(storage: Storage, target: str) -> list[DrillRecord]:
    """Return every readable drill report of ``target`` in ``storage``, newest first.

    Unreadable and malformed reports are skipped. Raises StorageError when the storage cannot be listed.
    """
    found = (_read_drill(storage, key) for key in _report_keys(storage, target))
    return sorted((record for record in found if record is not None), key=lambda r: r.sort_key, reverse=True)


def latest_drill(storage: Storage, target: str) -> DrillRecord | None:
    """Return the newest drill report of ``target`` in ``storage``, or None when it has none.

    A malformed newest report is skipped in favour of the one before it. Drill ids carry their
    start time to the second, then a random suffix, so two drills started in the same second
    sort by chance: those are compared by their recorded start times. Raises StorageError when
    the storage cannot be listed.
    """
    newest: DrillRecord | None = None
    second = ""
    for key in _report_keys(storage, target):
        name = key.rsplit("/", 1)[-1]
        if newest is not None and not name.startswith(second):
            break
        record = _read_drill(storage, key)
        if record is None:
            continue
        if newest is None:
            newest, second = record, name.rsplit("-", 1)[0]
        elif record.sort_key > newest.sort_key:
            newest = record
    return newest


def newest_drill(records: Iterable[DrillRecord | None]) -> DrillRecord | None:
    """Return the newest of ``records`` (say, the latest drill of each storage), or None."""
    present = [record for record in records if record is not None]
    return max(present, key=lambda r: r.sort_key) if present else None
