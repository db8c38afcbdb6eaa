"""Which recovery points are in the future: the one decision everything asks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opskit.plan.timeline import CLOCK_SKEW, describe_future, future, is_future, present

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Point:
    id: str
    snapshot_time: datetime


def test_a_moment_within_the_skew_allowance_is_not_in_the_future() -> None:
    assert not is_future(NOW + CLOCK_SKEW, NOW)
    assert is_future(NOW + CLOCK_SKEW + timedelta(seconds=1), NOW)
    assert not is_future(NOW - timedelta(days=400), NOW)


def test_backups_split_into_present_and_future_keeping_their_order() -> None:
    points = [Point("ahead", NOW + timedelta(days=365)), Point("now", NOW), Point("old", NOW - timedelta(days=1))]

    assert [p.id for p in present(points, NOW)] == ["now", "old"]
    assert [p.id for p in future(points, NOW)] == ["ahead"]


def test_the_sentence_names_the_backup_and_how_far_ahead_it_is() -> None:
    text = describe_future("20271126T120000Z-abcd", NOW + timedelta(days=365), NOW)

    assert text.startswith("backup 20271126T120000Z-abcd is dated 365d in the future")
    assert "5 min skew allowance" in text
