"""A job file's [args] and schedule are checked at daemon start, so no job can only ever fail at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opskit.config.load import parse_config
from opskit.config.model import Config
from opskit.daemon.jobs import load_job
from tests.daemon.test_jobs import assert_job_refused


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config(f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n')


def job_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "nightly.toml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            'action = "backup"\ninterval = "1h"\n[args]\nbogus = 1\n',
            "At 'args.bogus': action 'backup' has no argument 'bogus' (its arguments: labels, extra, kind)",
        ),
        (
            'action = "backup"\ninterval = "1h"\n[args]\nlabels = "nightly"\n',
            "At 'args.labels': must be a list of strings, not the string 'nightly'",
        ),
        ('action = "backup"\ninterval = "1h"\n[args]\nlabels = [1]\n', "At 'args.labels': must be a list of strings"),
        (
            'action = "backup"\ninterval = "1h"\n[args]\nlabels = ["night,ly"]\n',
            "At 'args.labels': 'night,ly' contains ',': labels are printable text without commas",
        ),
        ('action = "prune"\ninterval = "1h"\n[args]\ndry_run = "yes"\n', "At 'args.dry_run': must be true or false"),
        ('action = "runbook"\ninterval = "1h"\n', "At 'args.name': action 'runbook' needs 'name'"),
        (
            'action = "runbook"\ninterval = "1h"\n[args]\nname = "x"\nconfirm = "y"\n',
            "At 'args.confirm': must be a function",
        ),
        ('action = "backup"\ncron = "0 0 31 2 *"\n', "never fires"),
        ('action = "backup"\ncron = { year = "2001", hour = "1" }\n', "never fires"),
    ],
)
def test_a_job_whose_args_or_schedule_could_never_work_is_refused_naming_the_file_and_key(
    tmp_path: Path, config: Config, body: str, reason: str
) -> None:
    assert_job_refused(job_file(tmp_path, body), config, reason)


def test_args_that_fit_the_action_are_accepted(tmp_path: Path, config: Config) -> None:
    path = job_file(
        tmp_path,
        'action = "runbook"\ninterval = "1h"\n[args]\nname = "failover"\nvariables = { region = "eu" }\nyes = true\n',
    )
    assert load_job(path, config).args == {"name": "failover", "variables": {"region": "eu"}, "yes": True}
    path = job_file(tmp_path, 'action = "prune"\ncron = "0 3 * * *"\n[args]\ngrace = "2d"\nall_targets = true\n')
    assert load_job(path, config).args == {"grace": "2d", "all_targets": True}


def test_the_daemon_with_a_bad_args_key_exits_2_at_start_naming_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n[targets.app]\ndsn = "dbname=app"\n', encoding="utf-8"
    )
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "nightly.toml").write_text('action = "backup"\ninterval = "1h"\n[args]\nbogus = 1\n', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "opskit", "--config", str(config), "daemon", "--jobs-dir", str(jobs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert str(jobs / "nightly.toml") in result.stderr and "args.bogus" in result.stderr
