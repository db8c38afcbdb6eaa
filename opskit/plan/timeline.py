"""Which recovery points can be trusted in time. Pure: every function takes ``now``.

A backup whose snapshot time lies more than :data:`CLOCK_SKEW` ahead of ``now`` (the
repository's clock, injected) was taken by a host whose clock was wrong. Its age is
unknown, so it must not stand for "the newest backup": ``latest`` never picks it, the
RPO is measured from the newest backup that is not in the future, and retention neither
deletes it nor counts it towards its floors. This module is the one place that decides
"future"; the catalog, retention, status, metrics and verify all ask it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

# Hosts synchronised by NTP agree within milliseconds; five minutes tolerates a VM that was
# suspended or a container host that drifted, while a year-ahead clock is still caught.
CLOCK_SKEW = timedelta(minutes=5)


class Dated(Protocol):
    """Anything with an aware snapshot time (a Manifest, a retention Backup)."""

    @property
    def snapshot_time(self) -> datetime: ...


_D = TypeVar("_D", bound=Dated)


def is_future(moment: datetime, now: datetime, skew: timedelta = CLOCK_SKEW) -> bool:
    """Return True when ``moment`` lies more than ``skew`` ahead of ``now``."""
    return moment > now + skew


def present(backups: Iterable[_D], now: datetime) -> list[_D]:
    """Return the backups that are not future-dated, in their given order."""
    return [b for b in backups if not is_future(b.snapshot_time, now)]


def future(backups: Iterable[_D], now: datetime) -> list[_D]:
    """Return the future-dated backups, in their given order."""
    return [b for b in backups if is_future(b.snapshot_time, now)]


def describe_future(backup_id: str, snapshot_time: datetime, now: datetime) -> str:
    """Return one sentence naming a future-dated backup and how far ahead of ``now`` it is."""
    ahead = snapshot_time - now
    hours = ahead.total_seconds() / 3600
    span = (
        f"{hours / 24:.0f}d" if hours >= 48 else f"{hours:.1f}h" if hours >= 1 else f"{ahead.total_seconds() / 60:.0f}m"
    )
    return (
        f"backup {backup_id} is dated {span} in the future "
        f"(beyond the {int(CLOCK_SKEW.total_seconds() // 60)} min skew allowance): "
        "it is ignored as the newest backup; fix the clock of the host that took it"
    )
