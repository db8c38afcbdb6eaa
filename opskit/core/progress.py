"""Progress on a terminal: bytes moved, the rate and, when the size is known, percent and ETA.

One stderr line, redrawn at most twice a second; silent unless enabled (a person at a
terminal, and not ``--quiet``), so logs and ``--json`` output are never interleaved with it.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType

from opskit.core.units import format_size

# `opskit --quiet` turns every progress line off, whatever the caller's `enabled` says.
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) every :class:`ByteProgress` of this process (``opskit --quiet``)."""
    global _quiet
    _quiet = quiet


def format_eta(seconds: float) -> str:
    """Return ``seconds`` as ``H:MM:SS`` (``M:SS`` under an hour), the way rsync and pv show it."""
    whole = max(int(seconds + 0.5), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ByteProgress:
    """Counts bytes and redraws ``label: 1.2 GiB, 85.0 MiB/s`` at most twice a second.

    With ``expected`` (the stored size from the manifest, for restore, verify and copy) the line
    becomes ``label: 1.2 GiB of 4.0 GiB (30%), 85.0 MiB/s, ETA 0:33``. The percentage stops at
    99% until :meth:`close`, because the expected size is a promise, not a measurement.
    Thread-safe: stages may report from different threads.
    """

    def __init__(self, label: str, enabled: bool, interval: float = 0.5, expected: int | None = None) -> None:
        self.label = label
        self.enabled = enabled and not _quiet
        self.interval = interval
        self.expected = expected if expected and expected > 0 else None
        self.total = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._lock = threading.Lock()
        self._drawn = False

    def __call__(self, count: int) -> None:
        with self._lock:
            self.total += count
            if not self.enabled:
                return
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw(now)

    def line(self, now: float) -> str:
        """Return the progress text for the bytes counted so far at monotonic time ``now``."""
        elapsed = max(now - self._started, 1e-6)
        rate = self.total / elapsed
        if self.expected is None:
            return f"{self.label}: {format_size(self.total)}, {format_size(rate)}/s"
        percent = min(int(self.total * 100 / self.expected), 99)
        remaining = max(self.expected - self.total, 0)
        eta = format_eta(remaining / rate) if rate > 0 else "?"
        return (
            f"{self.label}: {format_size(self.total)} of {format_size(self.expected)} ({percent}%), "
            f"{format_size(rate)}/s, ETA {eta}"
        )

    def _draw(self, now: float) -> None:
        sys.stderr.write(f"\r{self.line(now)}   ")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the progress line."""
        if self.enabled and self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def __enter__(self) -> ByteProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
