"""What a point-in-time restore aims at and what it reached: the target, the window, the base backup to start from, the result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from opskit.catalog import Manifest, format_time, latest_backup, list_backups
from opskit.context import AppContext
from opskit.core.errors import ConfigError
from opskit.plan import timeline
from opskit.restore import pitr_complete
from opskit.wal import chain as wal_chain
from opskit.wal import layout
from opskit.wal.archive import newest_archived

ARCHIVING_OFF = (
    "archiving is off in the restored copy (archive_mode = 'off' in postgresql.auto.conf), so it cannot write "
    "into the archive it came from; to make it a primary that archives, point archive_command at a target of "
    "its own, then run ALTER SYSTEM RESET archive_mode and restart it"
)


@dataclass(frozen=True)
class RecoveryTarget:
    """Where recovery stops: one of a time, an LSN, a restore point name, or the end of the archive."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.time, self.lsn, self.name) if v is not None]
        if len(given) > 1:
            raise ConfigError("give one of --to-time, --to-lsn, --to-name or --latest")
        if self.lsn is not None:
            try:
                layout.parse_lsn(self.lsn)
            except ValueError as exc:
                raise ConfigError(f"--to-lsn: {exc}") from exc

    def settings(self) -> dict[str, str]:
        """Return the ``recovery_target_*`` settings for this target ({} for the end of the archive)."""
        if self.time is not None:
            # PostgreSQL reads a timestamptz literal: "2026-12-01 14:59:00.000000+00", not ISO's "T...Z".
            return {"recovery_target_time": self.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        if self.name is not None:
            return {"recovery_target_name": self.name}
        return {}

    def describe(self) -> str:
        """Return the target in words, for messages."""
        if self.time is not None:
            return f"time {format_time(self.time)}"
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        if self.name is not None:
            return f"restore point '{self.name}'"
        return "the end of the archived WAL"


@dataclass
class PitrResult:
    """A restored data directory, the base backup it came from and, after ``--start``, the point recovery reached."""

    manifest: Manifest
    pgdata: str
    target: RecoveryTarget
    started: bool = False
    port: int | None = None
    replay_lsn: str | None = None
    last_transaction_time: datetime | None = None
    timeline: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # how the target was reached when not as asked (the archive's end)
    log_start: int = 0  # where the latest start's lines begin in the server log

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the result."""
        return {
            "backup": self.manifest.id,
            "pgdata": self.pgdata,
            "target": self.target.describe(),
            "started": self.started,
            "port": self.port,
            "replay_lsn": self.replay_lsn,
            "last_transaction_time": format_time(self.last_transaction_time) if self.last_transaction_time else None,
            "timeline": self.timeline,
            "note": self.note,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "archiving": ARCHIVING_OFF,  # what to do before the copy can archive as a new primary
        }


@dataclass(frozen=True)
class PitrWindow:
    """The moments a target can be recovered to: its oldest base backup's consistent point .. its newest WAL.

    ``end`` is the newest moment the archive is known to hold every transaction up to: when its
    newest WAL reached the storage (``archived_at``, what ``status`` shows as the end of the
    window), or later when the source server confirmed it wrote nothing since
    (:func:`confirmed_window`); ``newest_segment`` is the newest complete segment's name.
    ``start <= end`` always: right after the first base backup, before any WAL stored after its
    consistent point, ``waiting_for`` names that backup and the window holds no moment yet
    (``end == start``, :meth:`contains` is False); ``--latest`` still recovers it.
    """

    start: datetime
    end: datetime
    newest_segment: str
    archived_at: datetime
    waiting_for: str | None = None

    def contains(self, moment: datetime) -> bool:
        """Return True when ``moment`` lies inside the window (both ends included); never while it waits for WAL."""
        return self.waiting_for is None and self.start <= moment <= self.end

    def describe(self) -> str:
        """Return ``<start> .. <end>`` for messages, or why there is no window yet."""
        if self.waiting_for is not None:
            return f"none yet: {self.waiting_note()}"
        return f"{format_time(self.start)} .. {format_time(self.end)}"

    def waiting_note(self) -> str:
        """Return the sentence saying which base backup waits for WAL (empty when the window is open)."""
        if self.waiting_for is None:
            return ""
        return (
            f"waiting for WAL after base backup {self.waiting_for} (consistent at {format_time(self.start)}; "
            f"the newest WAL was stored at {format_time(self.archived_at)})"
        )


def pitr_window(store: Any, target: str, backups: Sequence[Manifest], now: datetime) -> PitrWindow | None:
    """Return the PITR window of ``target`` in ``store``, or None without a base backup or archived WAL.

    ``backups`` are the target's backups of any kind; future-dated ones are left out. The
    window is one that waits (``waiting_for``) while no WAL reached the storage after the oldest
    base backup's consistent point: its own last segment is stored before its manifest is.
    Raises StorageError when the archive cannot be listed.
    """
    bases = [m for m in timeline.present(backups, now) if m.kind == "base"]
    newest = newest_archived(store, target) if bases else None
    if not bases or newest is None:
        return None
    oldest = min(bases, key=lambda m: (m.snapshot_time, m.id))
    name, stored = newest
    if stored < oldest.snapshot_time:
        return PitrWindow(oldest.snapshot_time, oldest.snapshot_time, name, stored, waiting_for=oldest.id)
    return PitrWindow(start=oldest.snapshot_time, end=stored, newest_segment=name, archived_at=stored)


def confirmed_window(
    ctx: AppContext, store: Any, target: str, manifest: Manifest, window: PitrWindow, moment: datetime | None
) -> tuple[PitrWindow, str | None]:
    """Return ``window``, its end moved to when the source server confirmed the archive complete, when ``moment`` needs it.

    Only a ``moment`` after the window's end and not after now asks the server
    (:func:`opskit.restore.pitr_complete.confirm`); ``manifest`` is the base backup recovery
    starts from. Returns the window and, when the moment stays after its end, why the server
    did not confirm (None otherwise). Never raises.
    """
    if moment is None or moment < window.start or moment > ctx.clock() or window.contains(moment):
        return window, None
    answer = pitr_complete.confirm(ctx, ctx.target(target), store, manifest, window.newest_segment)
    if answer.at is None or answer.at < window.start:
        return window, answer.reason or None
    extended = replace(window, end=max(answer.at, window.end), waiting_for=None)
    if not extended.contains(moment):
        return extended, f"the server confirmed it only up to {format_time(answer.at)}"
    return extended, None


@dataclass(frozen=True)
class Coverage:
    """Whether point-in-time recovery can reach ``moment`` on a target, and the window that says so.

    ``gap`` is the first segment missing from the WAL chain of the base backup a restore to
    ``moment`` would start from (None: no gap): the window's ends alone do not see it, and
    recovery from that backup stops there.
    """

    target: str
    moment: datetime
    window: PitrWindow | None
    gap: str | None = None
    base_id: str | None = None

    @property
    def covered(self) -> bool:
        """Return True when the moment lies inside the PITR window and the WAL from its base backup has no gap."""
        return self.window is not None and self.window.contains(self.moment) and self.gap is None

    def describe(self) -> str:
        """Return one line for people: covered, or why not."""
        when = format_time(self.moment)
        if self.window is None:
            return f"target '{self.target}' has no base backup with archived WAL: {when} is not recoverable by PITR"
        if self.gap is not None and self.window.contains(self.moment):
            return (
                f"{when} is inside the PITR window of target '{self.target}' ({self.window.describe()}), but the WAL "
                f"of base backup {self.base_id} has a gap at segment {self.gap}: recovery from it stops there "
                "('opskit wal verify' lists the gaps)"
            )
        verdict = "inside" if self.covered else "outside"
        return f"{when} is {verdict} the PITR window of target '{self.target}' ({self.window.describe()})"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "target": self.target,
            "moment": format_time(self.moment),
            "covered": self.covered,
            "window": None
            if self.window is None or self.window.waiting_for is not None
            else {"start": format_time(self.window.start), "end": format_time(self.window.end)},
            "waiting_for": None if self.window is None else self.window.waiting_for,
            "gap": None if self.gap is None else {"backup": self.base_id, "first_missing": self.gap},
        }


def coverage(ctx: AppContext, target: str | None, moment: datetime) -> Coverage:
    """Return whether ``moment`` is inside ``target``'s PITR window in its primary storage, with no gap on the way.

    Raises ConfigError for an unknown target, StorageError when the storage cannot be read.
    """
    source = ctx.target(target)
    store = ctx.storage(source.primary_storage)
    backups = list_backups(store, source.name)
    window = pitr_window(store, source.name, backups, ctx.clock())
    base = choose_base(backups, RecoveryTarget(time=moment), ctx.clock())
    if window is not None and base is not None:
        window, _why = confirmed_window(ctx, store, source.name, base, window, moment)
    answer = Coverage(target=source.name, moment=moment, window=window)
    if window is None or base is None or not window.contains(moment):
        return answer
    # A gap anywhere after the base counts: where it lies in time is not in the listing, and
    # a runbook asking this question would rather take the logical path than stop at it.
    chain = next((c for c in wal_chain.check(ctx, target=source.name).chains if c.backup_id == base.id), None)
    if chain is not None and chain.missing:
        answer = replace(answer, gap=chain.missing[0], base_id=base.id)
    return answer


def choose_base(backups: Sequence[Manifest], target: RecoveryTarget, now: datetime) -> Manifest | None:
    """Return the base backup to recover ``target`` from: the newest consistent before it, or None.

    ``backups`` may hold both kinds, newest first; logical and future-dated ones are skipped.
    """
    bases = [m for m in backups if m.kind == "base"]
    if target.time is not None:
        moment = target.time
        bases = [m for m in bases if m.snapshot_time <= moment]
    elif target.lsn is not None:
        lsn = layout.parse_lsn(target.lsn)
        bases = [m for m in bases if layout.parse_lsn(str(m.base.get("stop_lsn", "0/0"))) <= lsn]
    return latest_backup(bases, now)
