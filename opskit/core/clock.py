"""The one clock: time in opskit comes from a ``Clock`` that callers inject.

Policies and records take the time as an argument (``AppContext.clock``, a scheduler's
``clock``) so tests can fake it; only :func:`utc_now`, the default, reads the system clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]
"""A function returning the current time, timezone-aware."""


def utc_now() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)
