"""A pool of N slots shared by threads that put work on one server, where some work goes first.

A restore's loader writes COPY blocks and its index builds run beside it, and together they
must keep at most N backends busy. A plain semaphore lets the loader win every time: its
threads release a slot and take it back a few microseconds later, before a woken build thread
gets to run, so a build that could start waits until the data runs dry. Here a taker that says
it is urgent (an index build, which is the long path of the restore) gets the next free slot
before any ordinary taker does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Slots:
    """``count`` slots; :meth:`hold` takes one for a block of work, urgent takers first."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a pool needs at least one slot, not {count}")
        self._free = count
        self._urgent_waiting = 0
        self._cond = threading.Condition()

    def acquire(self, urgent: bool = False) -> None:
        """Take a slot, waiting until one is free (and, if not urgent, until no urgent taker waits)."""
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
                try:
                    self._cond.wait_for(lambda: self._free > 0)
                finally:
                    self._urgent_waiting -= 1
                self._free -= 1
                # Ordinary takers woken by the release that freed this slot may have seen this taker
                # waiting and gone back to sleep while another slot stayed free.
                self._cond.notify_all()
            else:
                self._cond.wait_for(lambda: self._free > 0 and self._urgent_waiting == 0)
                self._free -= 1

    def release(self) -> None:
        """Give a slot back."""
        with self._cond:
            self._free += 1
            self._cond.notify_all()

    @contextmanager
    def hold(self, count: int = 1, *, urgent: bool = False) -> Iterator[None]:
        """Hold ``count`` slots while the block runs (taken one at a time, all given back after)."""
        taken = 0
        try:
            for _ in range(count):
                self.acquire(urgent)
                taken += 1
            yield
        finally:
            for _ in range(taken):
                self.release()

    @property
    def free(self) -> int:
        """How many slots nobody holds (a snapshot, for tests and logs)."""
        with self._cond:
            return self._free
