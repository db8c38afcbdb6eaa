"""RPO and RTO arithmetic (docs/operations.md §2). Pure: every function takes ``now``.

- Recovery point of a backup = its snapshot time (what a restore returns to).
- Current RPO = now - newest recovery point; breached when above the target.
- Worst RPO over a window = max over consecutive backups of (next finish - previous recovery
  point), and (now - newest recovery point) for the interval still open.
- Estimated RTO = a drill's measured RTO + allowances (detection, decision, cutover); a
  warning from 80% of the target.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

WARN_FRACTION = 0.8
OK = "ok"
WARN = "warn"
BREACHED = "breached"


@dataclass(frozen=True)
class BackupPoint:
    """What the RPO math needs from one complete backup."""

    recovery_point: datetime  # the snapshot time
    finished: datetime


@dataclass(frozen=True)
class RpoAssessment:
    """Current and worst RPO against the target, and whether the schedule can meet it at all."""

    target: timedelta
    current: timedelta | None  # None: no backup at all
    worst: timedelta | None
    typical_interval: timedelta | None  # median gap between consecutive recovery points in the window
    window: timedelta

    @property
    def breached(self) -> bool:
        """Return True when the current RPO is above the target (or there is no backup)."""
        return self.current is None or self.current > self.target

    @property
    def worst_breached(self) -> bool:
        """Return True when the worst RPO over the window was above the target."""
        return self.worst is None or self.worst > self.target

    @property
    def schedule_too_sparse(self) -> bool:
        """Return True when backups are taken further apart than the RPO target allows."""
        return self.typical_interval is not None and self.typical_interval > self.target

    @property
    def status(self) -> str:
        """Return ``ok``, ``warn`` (worst over the window breached, or 80% of the target) or ``breached``."""
        if self.breached:
            return BREACHED
        assert self.current is not None
        if self.worst_breached or self.current > self.target * WARN_FRACTION:
            return WARN
        return OK

    def explain(self) -> str:
        """Return one plain sentence: achieved vs target, and why when the schedule cannot meet it."""
        if self.current is None:
            return f"no complete backup exists, target {short(self.target)}: the RPO objective is breached"
        text = f"current RPO {short(self.current)}, target {short(self.target)}"
        if self.worst is not None:
            text += f"; worst over {short(self.window)} {short(self.worst)}"
        if self.schedule_too_sparse:
            assert self.typical_interval is not None
            text += (
                f"; achieved {short(self.typical_interval)}, target {short(self.target)}: "
                "the backup interval alone exceeds the RPO target"
            )
        elif self.breached:
            text += ": the newest backup is older than the target allows"
        return text


def current_rpo(points: Sequence[BackupPoint], now: datetime) -> timedelta | None:
    """Return now - the newest recovery point, or None when there is no backup."""
    if not points:
        return None
    return now - max(p.recovery_point for p in points)


def worst_rpo(points: Sequence[BackupPoint], now: datetime, window: timedelta) -> timedelta | None:
    """Return the worst data-loss exposure over ``window`` before ``now`` (None without backups).

    For each consecutive pair (by recovery point), a failure just before the next backup
    finished would have lost everything since the previous recovery point: the gap is
    ``next.finished - previous.recovery_point``. Pairs whose exposure ended before the window
    began are ignored. The open interval contributes ``now - newest recovery point``.
    """
    if not points:
        return None
    ordered = sorted(points, key=lambda p: p.recovery_point)
    start = now - window
    gaps = [now - ordered[-1].recovery_point]
    for previous, following in itertools.pairwise(ordered):
        if following.finished >= start:
            gaps.append(following.finished - previous.recovery_point)
    return max(gaps)


def typical_interval(points: Sequence[BackupPoint], now: datetime, window: timedelta) -> timedelta | None:
    """Return the median gap between consecutive recovery points within the window (None with < 2)."""
    start = now - window
    recent = sorted(p.recovery_point for p in points if p.recovery_point >= start)
    if len(recent) < 2:
        return None
    gaps = [b - a for a, b in itertools.pairwise(recent)]
    return timedelta(seconds=statistics.median(g.total_seconds() for g in gaps))


def assess_rpo(
    points: Sequence[BackupPoint], now: datetime, target: timedelta, window: timedelta = timedelta(days=7)
) -> RpoAssessment:
    """Return the current and worst RPO of a target's backups against ``target``."""
    return RpoAssessment(
        target=target,
        current=current_rpo(points, now),
        worst=worst_rpo(points, now, window),
        typical_interval=typical_interval(points, now, window),
        window=window,
    )


@dataclass(frozen=True)
class RtoAssessment:
    """A drill's measured RTO, the estimate with allowances, and the target."""

    measured: timedelta
    allowances: timedelta
    target: timedelta

    @property
    def estimated(self) -> timedelta:
        """Return measured + allowances: what a real recovery would take."""
        return self.measured + self.allowances

    @property
    def status(self) -> str:
        """Return ``breached`` above the target, ``warn`` from 80% of it, else ``ok``."""
        if self.estimated > self.target:
            return BREACHED
        if self.estimated >= self.target * WARN_FRACTION:
            return WARN
        return OK


def rpo_status(data_loss: timedelta, target: timedelta) -> str:
    """Return ``breached``/``warn``/``ok`` for a measured data-loss window against the RPO target."""
    if data_loss > target:
        return BREACHED
    if data_loss >= target * WARN_FRACTION:
        return WARN
    return OK


def short(delta: timedelta | float) -> str:
    """Return a compact duration: ``24h``, ``45m``, ``14d``, ``1h 30m``, ``42s``, ``1.3s``."""
    exact = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if abs(exact) < 60 and exact != int(exact):
        return f"{exact:.1f}s"  # drills of small databases take seconds: keep the tenths
    total = int(exact)
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total and total % 86400 == 0 and total >= 7 * 86400:
        return f"{sign}{total // 86400}d"
    if total and total % 3600 == 0:
        return f"{sign}{total // 3600}h"
    if total and total % 60 == 0 and total < 3600:
        return f"{sign}{total // 60}m"
    # Up to two days read better in hours ("24h 5m" next to a "24h" interval, not "1d 5m").
    days, rest = divmod(total, 86400) if total >= 2 * 86400 else (0, total)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return sign + (" ".join(shown) if shown else "0s")
