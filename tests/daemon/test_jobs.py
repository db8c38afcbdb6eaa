"""Job files: parsing, validation errors naming the file, schedules and their slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from opskit.config.load import parse_config
from opskit.config.model import Config
from opskit.core.errors import ConfigError
from opskit.daemon.jobs import (
    crontab_weekdays,
    load_job,
    load_jobs,
    parse_job,
    previous_fire_time,
    register_action,
    resolve_action,
    unregister_action,
)
from tests.servers import REPO_ROOT

REPO = REPO_ROOT


@pytest.fixture
def config() -> Config:
    return parse_config(
        """
        [storages.local]
        url = "file:///tmp/opskit-unit-never-written"
        [targets.app]
        dsn = "dbname=app"
        [targets.reporting]
        dsn = "dbname=reporting"
        """
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def assert_job_refused(path: Path, config: Config, reason: str) -> None:
    """Assert that loading the job file ``path`` raises a ConfigError (exit 2) naming the file and ``reason``."""
    with pytest.raises(ConfigError) as caught:
        load_job(path, config)
    assert str(path) in caught.value.message
    assert reason in caught.value.message
    assert caught.value.exit_code == 2


def test_a_valid_job_file_becomes_a_job_named_after_the_file(tmp_path: Path, config: Config) -> None:
    path = write(
        tmp_path,
        "hourly-backup",
        'action = "backup"\ntarget = "app"\ncron = "0 * * * *"\nmisfire_grace_time = "2h"\n'
        '[args]\nlabels = ["scheduled"]\n',
    )
    job = load_job(path, config)
    assert job.name == "hourly-backup"
    assert job.action == "backup"
    assert job.target == "app"
    assert isinstance(job.trigger, CronTrigger)
    assert job.misfire_grace_time == timedelta(hours=2)
    assert job.args == {"labels": ["scheduled"]}


def test_the_misfire_grace_time_defaults_to_an_hour_not_one_second(config: Config) -> None:
    job = parse_job("j", {"action": "backup", "interval": "1h"}, config)
    assert job.misfire_grace_time == timedelta(hours=1)


def test_a_job_has_no_timeout_unless_its_file_sets_one(config: Config) -> None:
    assert parse_job("j", {"action": "backup", "interval": "1h"}, config).timeout is None
    job = parse_job("j", {"action": "backup", "interval": "1h", "timeout": "50m"}, config)
    assert job.timeout == timedelta(minutes=50)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('action = "explode"\ninterval = "1h"\n', "unknown action 'explode'"),
        ('action = "backup"\ncron = "61 * * * *"\n', "cron"),
        ('action = "backup"\ncron = "* * *"\n', "has 3 fields"),
        ('action = "backup"\ntarget = "nope"\ninterval = "1h"\n', "unknown target 'nope'"),
        ('action = "backup"\ninterval = "1h"\ncolour = "blue"\n', "At 'colour': unknown key"),
        ('action = "backup"\n', "set exactly one of 'cron' or 'interval'"),
        ('action = "backup"\ncron = "0 * * * *"\ninterval = "1h"\n', "set exactly one"),
        ('action = "backup"\ninterval = "soon"\n', "not a duration"),
        ('action = "backup"\ninterval = "1h"\ntimezone = "Mars/Olympus"\n', "unknown time zone"),
        ('action = "backup"\ncron = "0 6 1-7 1,4,7,10 1"\n', "restricts both day-of-month and day-of-week"),
        ('action = "backup"\ninterval = "1h"\n[args]\ntarget = "app"\n', "top-level 'target'"),
        ('action = "backup"\ninterval = "1h"\ntimeout = "0s"\n', "At 'timeout': must be at least 1s"),
        ('action = "backup"\ninterval = "1h"\ntimeout = "forever"\n', "At 'timeout':"),
        ('action = "backup"\ninterval = "1h"\ntimeout = 3600\n', "At 'timeout':"),
        ('action = "wal-stream"\ninterval = "1m"\ntimeout = "6h"\n', "'wal-stream' runs until the daemon stops"),
    ],
)
def test_a_bad_job_file_fails_with_the_file_and_the_reason(
    tmp_path: Path, config: Config, body: str, reason: str
) -> None:
    assert_job_refused(write(tmp_path, "bad", body), config, reason)


def test_a_job_file_that_is_not_toml_is_a_config_error(tmp_path: Path, config: Config) -> None:
    path = write(tmp_path, "broken", "action = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_job(path, config)


def test_an_empty_jobs_directory_is_an_error(tmp_path: Path, config: Config) -> None:
    with pytest.raises(ConfigError, match=r"no \*\.toml job files"):
        load_jobs(tmp_path, config)


def test_crontab_weekday_numbers_follow_crontab_not_apscheduler() -> None:
    assert crontab_weekdays("0") == "sun"
    assert crontab_weekdays("7") == "sun"
    assert crontab_weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("fri-sun") == "fri,sat,sun"
    assert crontab_weekdays("*") == "*"


def test_a_sunday_crontab_job_fires_on_sunday(config: Config) -> None:
    job = parse_job("weekly", {"action": "prune", "cron": "30 2 * * 0"}, config)
    fire = job.trigger.get_next_fire_time(None, datetime(2026, 11, 26, tzinfo=UTC))  # a Thursday
    assert fire == datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    assert fire.strftime("%A") == "Sunday"


def test_the_quarterly_drill_runs_on_the_first_monday_of_each_quarter_at_six_utc(config: Config) -> None:
    job = load_job(REPO / "jobs" / "quarterly-drill.toml", config)
    fires = []
    cursor = datetime(2026, 11, 26, tzinfo=UTC)
    for _ in range(4):
        cursor = job.trigger.get_next_fire_time(None, cursor)
        fires.append(cursor)
        cursor += timedelta(seconds=1)
    assert fires == [
        datetime(2027, 1, 4, 6, tzinfo=UTC),
        datetime(2027, 4, 5, 6, tzinfo=UTC),
        datetime(2027, 7, 5, 6, tzinfo=UTC),
        datetime(2027, 10, 4, 6, tzinfo=UTC),
    ]
    assert all(fire.weekday() == 0 and fire.day <= 7 for fire in fires)


def test_every_shipped_example_job_loads(config: Config) -> None:
    jobs = load_jobs(REPO / "jobs", config)
    assert {job.action for job in jobs} >= {"backup", "prune", "verify", "copy", "drill"}


def test_cron_jobs_read_their_fields_in_the_jobs_time_zone(config: Config) -> None:
    job = parse_job("berlin", {"action": "backup", "cron": "0 3 * * *", "timezone": "Europe/Berlin"}, config)
    fire = job.trigger.get_next_fire_time(None, datetime(2026, 7, 1, tzinfo=UTC))
    assert fire.astimezone(ZoneInfo("Europe/Berlin")).hour == 3
    assert fire.astimezone(UTC).hour == 1  # CEST is UTC+2 in July


def test_interval_slots_are_the_same_whenever_a_replica_starts(config: Config) -> None:
    job = parse_job("often", {"action": "backup", "interval": "2s"}, config)
    assert isinstance(job.trigger, IntervalTrigger)
    now = datetime(2026, 11, 26, 18, 0, 5, 300000, tzinfo=UTC)
    assert previous_fire_time(job.trigger, now) == datetime(2026, 11, 26, 18, 0, 4, tzinfo=UTC)
    nxt = job.trigger.get_next_fire_time(None, now)
    assert nxt == datetime(2026, 11, 26, 18, 0, 6, tzinfo=UTC)


def test_the_previous_cron_slot_is_the_latest_fire_at_or_before_now(config: Config) -> None:
    job = parse_job("hourly", {"action": "backup", "cron": "0 * * * *"}, config)
    assert previous_fire_time(job.trigger, datetime(2026, 11, 26, 18, 59, tzinfo=UTC)) == datetime(
        2026, 11, 26, 18, tzinfo=UTC
    )
    assert previous_fire_time(job.trigger, datetime(2026, 11, 26, 18, 0, tzinfo=UTC)) == datetime(
        2026, 11, 26, 18, tzinfo=UTC
    )
    quarterly = parse_job("q", {"action": "drill", "cron": {"month": "1,4,7,10", "day": "1st mon", "hour": 6}}, config)
    assert previous_fire_time(quarterly.trigger, datetime(2026, 11, 26, tzinfo=UTC)) == datetime(
        2026, 10, 5, 6, tzinfo=UTC
    )


def test_actions_resolve_lazily_and_registered_fakes_take_precedence() -> None:
    def fake(ctx: object, target: str | None = None) -> str:
        return "fake"

    register_action("backup", fake)
    try:
        assert resolve_action("backup") is fake
    finally:
        unregister_action("backup")
    from opskit.backup import kinds  # the backup action: logical or base (issue 16)

    assert resolve_action("backup") is kinds.run


def test_an_unknown_action_cannot_be_resolved() -> None:
    with pytest.raises(ConfigError, match="unknown action"):
        resolve_action("explode")


def test_the_daemon_refuses_to_start_with_a_bad_job_file_naming_it(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from opskit.cli import main

    config_path = tmp_path / "opskit.toml"
    config_path.write_text(f'[storages.local]\nurl = "file://{tmp_path}/b"\n[targets.app]\ndsn = "dbname=app"\n')
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write(jobs, "fine", 'action = "backup"\ninterval = "1h"\n')
    write(jobs, "typo", 'action = "backup"\ncron = "0 25 * * *"\n')
    result = CliRunner().invoke(main, ["--config", str(config_path), "daemon", "--jobs-dir", str(jobs)])
    assert result.exit_code == 2
    assert "typo.toml" in result.output and "At 'cron'" in result.output
