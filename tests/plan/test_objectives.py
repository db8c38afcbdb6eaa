"""RPO/RTO math (docs/operations.md §2) with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opskit.plan import objectives
from opskit.plan.objectives import BackupPoint, RtoAssessment, assess_rpo, current_rpo, short, worst_rpo

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def point(hours_ago: float, took_minutes: float = 10) -> BackupPoint:
    recovery = NOW - timedelta(hours=hours_ago)
    return BackupPoint(recovery_point=recovery, finished=recovery + timedelta(minutes=took_minutes))


def test_current_rpo_is_now_minus_the_newest_recovery_point_not_its_upload_end() -> None:
    points = [point(5), point(0.5, took_minutes=20), point(3)]
    assert current_rpo(points, NOW) == timedelta(minutes=30)


def test_current_rpo_without_backups_is_unknown_and_breached() -> None:
    assessment = assess_rpo([], NOW, HOUR)
    assert assessment.current is None
    assert assessment.breached
    assert assessment.status == objectives.BREACHED
    assert "no complete backup" in assessment.explain()


def test_worst_rpo_spans_from_a_recovery_point_to_the_next_backups_finish() -> None:
    # Backups at -10 h and -2 h (finishing 10 min later): a loss just before the second finished
    # would have lost 8 h 10 min.
    points = [point(10), point(2)]
    assert worst_rpo(points, NOW, timedelta(days=7)) == timedelta(hours=8, minutes=10)


def test_worst_rpo_counts_the_open_interval_since_the_newest_backup() -> None:
    points = [point(3.5), point(3)]
    assert worst_rpo(points, NOW, timedelta(days=7)) == timedelta(hours=3)


def test_worst_rpo_ignores_gaps_that_ended_before_the_window() -> None:
    points = [point(24 * 20), point(24 * 10), point(1), point(0.5)]
    worst = worst_rpo(points, NOW, timedelta(days=7))
    # The 10-day gap ended 10 days ago; inside the window the worst is -10 d -> -1 h finish.
    assert worst == timedelta(hours=24 * 10 - 1, minutes=10)
    assert worst_rpo(points[2:], NOW, timedelta(days=7)) == timedelta(minutes=40)


def test_daily_backups_cannot_meet_a_one_hour_rpo_and_status_says_so_plainly() -> None:
    points = [point(24 * d + 0.25) for d in range(7)]
    assessment = assess_rpo(points, NOW, HOUR)
    assert assessment.current == timedelta(minutes=15)
    assert not assessment.breached
    assert assessment.schedule_too_sparse
    assert "achieved 24h, target 1h: the backup interval alone exceeds the RPO target" in assessment.explain()


def test_an_hourly_schedule_within_target_is_ok() -> None:
    points = [point(h + 0.1) for h in range(24)]
    assessment = assess_rpo(points, NOW, timedelta(hours=2))
    assert assessment.status == objectives.OK
    assert not assessment.schedule_too_sparse


def test_current_rpo_above_target_is_breached() -> None:
    assessment = assess_rpo([point(2)], NOW, HOUR)
    assert assessment.breached
    assert "older than the target" in assessment.explain()


def test_current_rpo_at_eighty_percent_of_target_warns() -> None:
    assessment = assess_rpo([point(0.85)], NOW, HOUR)
    assert assessment.status == objectives.WARN


def test_estimated_rto_adds_allowances_and_warns_from_eighty_percent() -> None:
    ok = RtoAssessment(measured=timedelta(hours=1), allowances=timedelta(minutes=30), target=timedelta(hours=4))
    assert ok.estimated == timedelta(hours=1, minutes=30)
    assert ok.status == objectives.OK
    warn = RtoAssessment(measured=timedelta(hours=3), allowances=timedelta(minutes=15), target=timedelta(hours=4))
    assert warn.status == objectives.WARN
    breached = RtoAssessment(measured=timedelta(hours=3), allowances=timedelta(hours=2), target=timedelta(hours=4))
    assert breached.status == objectives.BREACHED


def test_data_loss_window_status_against_the_rpo_target() -> None:
    assert objectives.rpo_status(timedelta(minutes=10), HOUR) == objectives.OK
    assert objectives.rpo_status(timedelta(minutes=50), HOUR) == objectives.WARN
    assert objectives.rpo_status(timedelta(hours=2), HOUR) == objectives.BREACHED


def test_short_durations_read_like_the_spec() -> None:
    assert short(timedelta(hours=24)) == "24h"
    assert short(timedelta(hours=1)) == "1h"
    assert short(timedelta(days=7)) == "7d"
    assert short(timedelta(minutes=90)) == "1h 30m"
    assert short(timedelta(minutes=45)) == "45m"
    assert short(1.25) == "1.2s"
    assert short(0) == "0s"
