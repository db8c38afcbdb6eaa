"""A drill's phases on the clock: when each began and ended, the bytes it moved, and which add up to the RTO."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from opskit import catalog

# The phases whose wall time is the measured RTO: what a real restore would also go through
# (a logical drill: fetch, decrypt, restore, verify; a PITR drill: fetch, extract,
# verifybackup, replay, verify).
RTO_PHASES = ("fetch", "decrypt", "restore", "extract", "verifybackup", "replay", "verify")


@dataclass
class PhaseTiming:
    """Start and end of one phase, and the bytes it moved (for throughput)."""

    name: str
    started_at: datetime
    ended_at: datetime
    seconds: float
    bytes: int = 0

    def to_dict(self) -> dict[str, object]:
        """Return the JSON-ready form, with throughput in bytes per second when bytes moved."""
        throughput = round(self.bytes / self.seconds) if self.bytes and self.seconds > 0 else None
        return {
            "name": self.name,
            "started_at": catalog.format_time(self.started_at),
            "ended_at": catalog.format_time(self.ended_at),
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "throughput_bytes_per_second": throughput,
        }


def measured_rto(phases: list[PhaseTiming]) -> timedelta:
    """Return the summed wall time of the RTO phases (:data:`RTO_PHASES`)."""
    return timedelta(seconds=sum(p.seconds for p in phases if p.name in RTO_PHASES))


class PhaseClock:
    """Times phases on the monotonic clock, stamped relative to the drill's (possibly fake) start.

    The monotonic clock measures durations even when the wall clock steps; the stamps are
    ``started_at`` plus elapsed time, so a test's fake clock gives consistent reports.
    """

    def __init__(self, started_at: datetime) -> None:
        self.started_at = started_at
        self._origin = time.monotonic()

    def elapsed(self) -> float:
        """Return the seconds since the clock was made."""
        return time.monotonic() - self._origin

    @contextlib.contextmanager
    def phase(self, phases: list[PhaseTiming], name: str) -> Iterator[PhaseTiming]:
        """Time the block as phase ``name`` and append it to ``phases``, also when the block raises.

        Yields the PhaseTiming, so the block can set the ``bytes`` it moved.
        """
        begin = self.elapsed()
        timing = PhaseTiming(name, self.started_at + timedelta(seconds=begin), self.started_at, 0.0)
        try:
            yield timing
        finally:
            end = self.elapsed()
            timing.seconds = end - begin
            timing.ended_at = self.started_at + timedelta(seconds=end)
            phases.append(timing)
