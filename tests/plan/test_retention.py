"""The retention planner: restic's forget semantics with a fixed clock, and policy parsing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from opskit.config.load import build_config
from opskit.config.retention import RetentionPolicy
from opskit.core.errors import ConfigError
from opskit.plan.retention import plan


@dataclass(frozen=True)
class FakeBackup:
    """Anything with an id and a snapshot time is a backup to the planner."""

    id: str
    snapshot_time: datetime


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def backup(text: str) -> FakeBackup:
    return FakeBackup(text, at(text))


def hourly(first: datetime, count: int) -> list[FakeBackup]:
    moments = (first + timedelta(hours=n) for n in range(count))
    return [FakeBackup(m.strftime("%Y-%m-%dT%H:%M"), m) for m in moments]


def kept_ids(result_plan: object) -> set[str]:
    return {d.id for d in result_plan.kept}  # type: ignore[attr-defined]


def reasons_of(result_plan: object, backup_id: str) -> tuple[str, ...]:
    return next(d.reasons for d in result_plan.decisions if d.id == backup_id)  # type: ignore[attr-defined]


GFS = RetentionPolicy(keep_last=3, keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3)


def test_hourly_backups_over_400_days_with_a_gfs_policy_keep_exactly_this_set() -> None:
    backups = hourly(at("2025-10-23T00:30"), 400 * 24)
    assert backups[-1].id == "2026-11-26T23:30"

    result = plan(backups, GFS, now=at("2026-11-27T00:00"))

    hours_of_the_last_day = {f"2026-11-26T{hour:02d}:30" for hour in range(24)}
    assert kept_ids(result) == hours_of_the_last_day | {
        # daily 7 (the 26th is already kept)
        "2026-11-25T23:30",
        "2026-11-24T23:30",
        "2026-11-23T23:30",
        "2026-11-22T23:30",
        "2026-11-21T23:30",
        "2026-11-20T23:30",
        # weekly 4: ISO weeks 2026-W48 (the 26th), W47 (Sunday the 22nd), W46, W45
        "2026-11-15T23:30",
        "2026-11-08T23:30",
        # monthly 12: 2026-11 (the 26th) back to 2025-12
        "2026-10-31T23:30",
        "2026-09-30T23:30",
        "2026-08-31T23:30",
        "2026-07-31T23:30",
        "2026-06-30T23:30",
        "2026-05-31T23:30",
        "2026-04-30T23:30",
        "2026-03-31T23:30",
        "2026-02-28T23:30",
        "2026-01-31T23:30",
        "2025-12-31T23:30",
        # yearly 3: 2026 and 2025 (already kept) leave one count, so restic keeps the oldest too
        "2025-10-23T00:30",
    }
    assert len(result.kept) == 44
    assert len(result.deleted) == 400 * 24 - 44
    assert reasons_of(result, "2026-11-26T23:30") == (
        "last",
        "hourly 2026-11-26T23",
        "daily 2026-11-26",
        "weekly 2026-W48",
        "monthly 2026-11",
        "yearly 2026",
        "min_keep",
    )
    assert reasons_of(result, "2025-12-31T23:30") == ("monthly 2025-12", "yearly 2025")
    assert reasons_of(result, "2025-10-23T00:30") == ("yearly 2025 (oldest)",)
    assert reasons_of(result, "2026-11-25T22:30") == ()


def test_every_backup_gets_a_decision_newest_first() -> None:
    backups = hourly(at("2026-11-01T00:00"), 50)
    result = plan(list(reversed(backups)), GFS, now=at("2026-11-27T00:00"))
    assert [d.id for d in result.decisions] == [b.id for b in reversed(backups)]


def test_iso_week_and_year_buckets_across_dec_28_to_jan_4() -> None:
    days = [f"2026-12-{day}T12:00" for day in (28, 29, 30, 31)] + [f"2027-01-0{day}T12:00" for day in (1, 2, 3, 4)]
    policy = RetentionPolicy(keep_weekly=2, keep_monthly=2, keep_yearly=2, min_keep=0)

    result = plan([backup(d) for d in days], policy, now=at("2027-01-05T00:00"))

    # Jan 1-3 2027 are in ISO week 2026-W53; Jan 4 opens 2027-W01.
    assert reasons_of(result, "2027-01-04T12:00") == ("weekly 2027-W01", "monthly 2027-01", "yearly 2027")
    assert reasons_of(result, "2027-01-03T12:00") == ("weekly 2026-W53",)
    assert reasons_of(result, "2026-12-31T12:00") == ("monthly 2026-12", "yearly 2026")
    assert kept_ids(result) == {"2027-01-04T12:00", "2027-01-03T12:00", "2026-12-31T12:00"}


def test_a_future_dated_backup_is_kept_and_does_not_take_a_keep_last_slot() -> None:
    backups = [backup("2026-11-29T00:00"), backup("2026-11-26T10:00"), backup("2026-11-25T10:00")]
    policy = RetentionPolicy(keep_last=1)

    result = plan(backups, policy, now=at("2026-11-26T12:00"))

    assert reasons_of(result, "2026-11-29T00:00") == ("future-dated",)
    assert reasons_of(result, "2026-11-26T10:00") == ("last", "min_keep")
    assert reasons_of(result, "2026-11-25T10:00") == ()


def test_buckets_use_the_policy_time_zone() -> None:
    # 14:00Z and 16:00Z are one UTC day but two Tokyo days (23:00 and 01:00 next day).
    backups = [backup("2026-11-26T16:00"), backup("2026-11-26T14:00"), backup("2026-11-25T16:00")]
    now = at("2026-11-27T00:00")

    in_utc = plan(backups, RetentionPolicy(keep_daily=2, min_keep=0), now)
    in_tokyo = plan(backups, RetentionPolicy(keep_daily=2, min_keep=0, timezone="Asia/Tokyo"), now)

    assert kept_ids(in_utc) == {"2026-11-26T16:00", "2026-11-25T16:00"}
    assert kept_ids(in_tokyo) == {"2026-11-26T16:00", "2026-11-26T14:00"}
    assert reasons_of(in_tokyo, "2026-11-26T16:00") == ("daily 2026-11-27",)


def test_hourly_labels_follow_local_time_in_a_dst_zone() -> None:
    result = plan(
        [backup("2026-11-27T03:00")],
        RetentionPolicy(keep_hourly=1, timezone="America/New_York"),
        at("2026-11-28T00:00"),
    )
    assert reasons_of(result, "2026-11-27T03:00") == ("hourly 2026-11-26T22", "min_keep")


def test_a_pinned_backup_is_kept_whatever_the_rules_say() -> None:
    backups = [backup("2026-11-26T10:00"), backup("2026-05-01T10:00"), backup("2026-04-01T10:00")]
    result = plan(backups, RetentionPolicy(keep_last=1), at("2026-11-27T00:00"), pinned=frozenset({"2026-05-01T10:00"}))
    assert reasons_of(result, "2026-05-01T10:00") == ("pinned",)
    assert kept_ids(result) == {"2026-11-26T10:00", "2026-05-01T10:00"}


def test_the_newest_verified_backup_is_kept_when_every_rule_drops_it() -> None:
    backups = [backup("2026-11-26T10:00"), backup("2026-11-25T10:00"), backup("2026-11-24T10:00")]
    verified = frozenset({"2026-11-25T10:00", "2026-11-24T10:00"})

    result = plan(backups, RetentionPolicy(keep_last=1), at("2026-11-27T00:00"), verified=verified)

    assert reasons_of(result, "2026-11-25T10:00") == ("newest verified",)
    assert reasons_of(result, "2026-11-24T10:00") == ()


def test_min_keep_keeps_the_newest_when_every_rule_drops_everything() -> None:
    backups = [backup("2026-10-03T10:00"), backup("2026-10-02T10:00"), backup("2026-10-01T10:00")]
    policy = RetentionPolicy(keep_within=timedelta(days=7), min_keep=2)

    result = plan(backups, policy, at("2026-11-27T00:00"))

    assert [d.reasons for d in result.decisions] == [("min_keep",), ("min_keep",), ()]


def test_keep_within_keeps_every_backup_younger_than_the_duration() -> None:
    backups = [backup("2026-11-26T10:00"), backup("2026-11-20T10:00"), backup("2026-11-10T10:00")]
    result = plan(backups, RetentionPolicy(keep_within=timedelta(days=10), min_keep=0), at("2026-11-27T00:00"))
    assert [d.reasons for d in result.decisions] == [("within 10d",), ("within 10d",), ()]


def test_the_plan_serializes_every_decision_for_json_output() -> None:
    result = plan([backup("2026-11-26T10:00")], RetentionPolicy(keep_last=1), at("2026-11-27T00:00"))
    assert result.to_dict()["decisions"] == [
        {
            "id": "2026-11-26T10:00",
            "kind": "logical",
            "snapshot_time": "2026-11-26T10:00:00Z",
            "action": "keep",
            "reasons": ["last", "min_keep"],
        }
    ]


def test_a_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError):
        plan([], RetentionPolicy(keep_last=1), datetime(2026, 11, 27))


def test_ten_thousand_backups_each_get_one_decision_and_the_pinned_one_is_kept() -> None:
    # How fast this is, is measured by bench/retention.py (no timed assertions in tests).
    backups = hourly(at("2025-10-01T00:15"), 10_000)

    result = plan(backups, GFS, now=at("2026-12-01T00:00"), pinned=frozenset({backups[5].id}))

    assert sorted(d.id for d in result.decisions) == sorted(b.id for b in backups)
    assert "pinned" in reasons_of(result, backups[5].id)
    assert 0 < len(result.kept) < 10_000


# --------------------------------------------------------------------------- parsing


def config_with(policy_toml: str) -> str:
    return f"""
[storages.local]
url = "file:///tmp/opskit-unused"

[targets.app]
dsn = "dbname=app"
retention = "standard"

[retention.standard]
{policy_toml}
"""


def test_a_policy_is_parsed_from_its_retention_table() -> None:
    from opskit.config.load import parse_config

    config = parse_config(
        config_with('keep_last = 3\nkeep_daily = 7\nkeep_within = "30d"\nmin_keep = 2\ntimezone = "Europe/Berlin"')
    )
    assert config.retention["standard"] == RetentionPolicy(
        keep_last=3, keep_daily=7, keep_within=timedelta(days=30), min_keep=2, timezone="Europe/Berlin"
    )


@pytest.mark.parametrize(
    ("policy_toml", "message"),
    [
        ("min_keep = 0", "At 'retention.standard': keeps nothing"),
        ('keep_daily = 0\nkeep_within = "0d"\nmin_keep = 0', "At 'retention.standard': keeps nothing"),
        ('keep_daily = 7\ntimezone = "Mars/Olympus"', "At 'retention.standard.timezone': unknown time zone"),
        ("keep_daily = -1", "At 'retention.standard.keep_daily': must be at least 0"),
        ("keep_dayly = 7", "At 'retention.standard.keep_dayly': unknown key"),
    ],
)
def test_bad_policies_are_config_errors(policy_toml: str, message: str) -> None:
    from opskit.config.load import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(policy_toml))
    assert message in caught.value.message


def test_a_policy_with_only_min_keep_is_allowed() -> None:
    config = build_config(
        {
            "storages": {"local": {"url": "file:///tmp/opskit-unused"}},
            "retention": {"newest": {}},
        }
    )
    assert config.retention["newest"].min_keep == 1


def test_a_backup_a_minute_ahead_is_within_the_skew_allowance_and_counts_as_present() -> None:
    backups = [backup("2026-11-26T12:01"), backup("2026-11-26T10:00")]

    result = plan(backups, RetentionPolicy(keep_last=1), now=at("2026-11-26T12:00"))

    assert reasons_of(result, "2026-11-26T12:01") == ("last", "min_keep")
    assert reasons_of(result, "2026-11-26T10:00") == ()


def test_with_min_keep_0_a_future_dated_backup_does_not_stand_in_for_the_last_real_one() -> None:
    backups = [backup("2027-11-26T00:00"), backup("2026-11-20T10:00"), backup("2026-11-19T10:00")]
    policy = RetentionPolicy(keep_within=timedelta(hours=1), min_keep=0)

    result = plan(backups, policy, now=at("2026-11-26T12:00"))

    assert kept_ids(result) == {"2027-11-26T00:00"}
    assert result.deletes_every_present_backup


def test_a_plan_that_keeps_a_real_backup_does_not_delete_everything() -> None:
    backups = [backup("2027-11-26T00:00"), backup("2026-11-26T10:00")]

    result = plan(backups, RetentionPolicy(keep_last=1), now=at("2026-11-26T12:00"))

    assert not result.deletes_every_present_backup


@dataclass(frozen=True)
class KindBackup:
    """A backup of a kind: ``logical`` (a dump) or ``base`` (pg_basebackup, what PITR replays WAL onto)."""

    id: str
    snapshot_time: datetime
    kind: str


def test_keep_last_2_keeps_2_base_backups_and_2_dumps_when_dumps_are_newer() -> None:
    bases = [KindBackup(f"base-{h}", at(f"2026-11-26T0{h}:00"), "base") for h in (1, 2, 3)]
    dumps = [KindBackup(f"dump-{h}", at(f"2026-11-26T0{h}:00"), "logical") for h in (4, 5)]

    result = plan([*bases, *dumps], RetentionPolicy(keep_last=2, min_keep=1), now=at("2026-11-26T12:00"))

    assert kept_ids(result) == {"base-3", "base-2", "dump-5", "dump-4"}
    assert [(d.id, d.kind) for d in result.deleted] == [("base-1", "base")]
    assert reasons_of(result, "base-3") == ("last", "min_keep")
    assert result.to_dict()["by_kind"] == {"base": {"keep": 2, "delete": 1}, "logical": {"keep": 2, "delete": 0}}
    assert result.to_dict()["decisions"][-1]["kind"] == "base"


def test_min_keep_and_newest_verified_hold_for_each_kind() -> None:
    bases = [KindBackup(f"base-{h}", at(f"2026-11-2{h}T00:00"), "base") for h in (1, 2, 3)]
    dumps = [KindBackup(f"dump-{h}", at(f"2026-11-2{h}T12:00"), "logical") for h in (4, 5)]
    policy = RetentionPolicy(keep_within=timedelta(hours=1), min_keep=1)

    result = plan([*bases, *dumps], policy, now=at("2026-11-26T00:00"), verified=frozenset({"base-1", "dump-4"}))

    assert {d.id: d.reasons for d in result.kept} == {
        "dump-5": ("min_keep",),
        "dump-4": ("newest verified",),
        "base-3": ("min_keep",),
        "base-1": ("newest verified",),
    }


def test_a_plan_that_deletes_every_base_backup_but_keeps_dumps_deletes_everything_of_a_kind() -> None:
    backups = [
        KindBackup("base", at("2026-11-20T00:00"), "base"),
        KindBackup("dump", at("2026-11-26T11:30"), "logical"),
    ]

    result = plan(backups, RetentionPolicy(keep_within=timedelta(hours=1), min_keep=0), now=at("2026-11-26T12:00"))

    assert kept_ids(result) == {"dump"}
    assert result.emptied_kinds == ("base",)
    assert result.deletes_every_present_backup
