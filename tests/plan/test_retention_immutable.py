"""The retention planner and immutable backups: a backup locked past ``now`` is kept, with the date."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from opskit.config.retention import RetentionPolicy
from opskit.plan.retention import plan

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class FakeBackup:
    id: str
    snapshot_time: datetime


def days_ago(days: int) -> FakeBackup:
    return FakeBackup(f"d{days}", NOW - timedelta(days=days))


def test_a_backup_locked_past_now_is_kept_with_the_date_it_unlocks() -> None:
    backups = [days_ago(1), days_ago(2), days_ago(3)]
    locked = {"d2": NOW + timedelta(days=5, microseconds=250)}

    result = plan(backups, RetentionPolicy(keep_last=1, min_keep=1), NOW, locked=locked)

    assert {d.id: d.reasons for d in result.decisions} == {
        "d1": ("last", "min_keep"),
        "d2": ("immutable until 2026-06-06T12:00:00Z",),
        "d3": (),
    }
    assert [d.id for d in result.deleted] == ["d3"]


def test_a_lock_that_has_ended_keeps_nothing() -> None:
    backups = [days_ago(1), days_ago(2)]

    result = plan(backups, RetentionPolicy(keep_last=1, min_keep=1), NOW, locked={"d2": NOW - timedelta(seconds=1)})

    assert [d.id for d in result.deleted] == ["d2"]


def test_the_immutable_reason_is_in_the_json_plan() -> None:
    result = plan([days_ago(1), days_ago(9)], RetentionPolicy(keep_last=1), NOW, locked={"d9": NOW + timedelta(days=1)})

    assert result.to_dict()["decisions"][1] == {
        "id": "d9",
        "kind": "logical",
        "snapshot_time": "2026-05-23T12:00:00Z",
        "action": "keep",
        "reasons": ["immutable until 2026-06-02T12:00:00Z"],
    }
