"""A pool of slots where an urgent taker (an index build) goes before ordinary ones (the loader)."""

from __future__ import annotations

import threading
import time

import pytest

from opskit.core.slots import Slots


def waiting_taker(slots: Slots, urgent: bool, got: list[str], name: str) -> threading.Thread:
    def take() -> None:
        slots.acquire(urgent)
        got.append(name)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def wait_until_blocked(slots: Slots, waiting: int) -> None:
    """Wait until ``waiting`` takers sleep on the pool (the condition's own waiter list)."""
    deadline = time.monotonic() + 5
    while len(slots._cond._waiters) < waiting:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the takers never waited"
        time.sleep(0.005)


def full_pool() -> Slots:
    """Return a pool of two slots, both taken."""
    slots = Slots(2)
    slots.acquire()
    slots.acquire()
    return slots


def test_a_freed_slot_goes_to_the_urgent_taker_even_when_an_ordinary_one_waited_longer() -> None:
    slots = full_pool()
    got: list[str] = []
    ordinary = waiting_taker(slots, False, got, "loader")
    wait_until_blocked(slots, 1)
    urgent = waiting_taker(slots, True, got, "build")
    wait_until_blocked(slots, 2)

    slots.release()
    urgent.join(timeout=5)

    assert got == ["build"] and ordinary.is_alive()
    slots.release()
    ordinary.join(timeout=5)
    assert got == ["build", "loader"] and slots.free == 0


def test_an_ordinary_taker_is_not_left_asleep_beside_a_free_slot_once_the_urgent_one_is_served() -> None:
    slots = full_pool()
    got: list[str] = []
    ordinary = waiting_taker(slots, False, got, "loader")
    urgent = waiting_taker(slots, True, got, "build")
    wait_until_blocked(slots, 2)

    with slots._cond:  # both slots come free at once: the urgent taker takes one, the loader the other
        slots._free += 2
        slots._cond.notify_all()
    urgent.join(timeout=5)
    ordinary.join(timeout=5)

    assert sorted(got) == ["build", "loader"] and slots.free == 0


def test_hold_gives_back_what_it_took_even_when_the_block_raises() -> None:
    slots = Slots(3)

    with pytest.raises(RuntimeError), slots.hold(2, urgent=True):
        assert slots.free == 1
        raise RuntimeError("a build failed")

    assert slots.free == 3


def test_a_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        Slots(0)
