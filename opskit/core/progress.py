"""Progress on a terminal: bytes moved and the rate, redrawn on one stderr line."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType

from opskit.core.units import format_size


class ByteProgress:
    """Counts bytes and redraws ``label: 1.2 GiB, 85.0 MiB/s`` at most twice a second.

    Silent unless ``enabled`` (a person at a terminal). Thread-safe: stages may report from
    different threads.
    """

    def __init__(self, label: str, enabled: bool, interval: float = 0.5) -> None:
        self.label = label
        self.enabled = enabled
        self.interval = interval
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

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-6)
        sys.stderr.write(f"\r{self.label}: {format_size(self.total)}, {format_size(self.total / elapsed)}/s   ")
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
