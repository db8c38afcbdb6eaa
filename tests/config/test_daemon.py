"""The [daemon] table."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from opskit.config.daemon import DaemonSettings, parse_listen
from opskit.config.load import parse_config
from opskit.core.errors import ConfigError

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n[targets.app]\ndsn = "dbname=app"\n'


def test_every_daemon_key_is_read_into_the_settings() -> None:
    config = parse_config(
        BASE
        + """
        [daemon]
        control_dsn = "dbname=control"
        control_password = "env:CONTROL_PW"
        listen = "127.0.0.1:9999"
        jobs_dir = "/etc/opskit/jobs"
        shutdown_grace = "90s"
        ledger_table = "ops.job_runs"
        """
    )
    settings = config.daemon
    assert isinstance(settings, DaemonSettings)
    assert settings.control_dsn == "dbname=control"
    assert settings.control_password is not None and settings.control_password.reference == "env:CONTROL_PW"
    assert settings.listen == "127.0.0.1:9999"
    assert settings.jobs_dir == Path("/etc/opskit/jobs")
    assert settings.shutdown_grace == timedelta(seconds=90)
    assert settings.ledger_table_parts == ("ops", "job_runs")


def test_an_absent_daemon_table_leaves_the_defaults_to_the_daemon() -> None:
    assert parse_config(BASE).daemon is None
    assert DaemonSettings().listen == "0.0.0.0:9187"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('listen = "nowhere"', "At 'daemon.listen'"),
        ('ledger_table = "runs; drop table x"', "At 'daemon.ledger_table'"),
        ('shutdown_grace = "forever"', "At 'daemon.shutdown_grace'"),
        ('colour = "blue"', "At 'daemon.colour': unknown key"),
    ],
)
def test_a_bad_daemon_key_is_reported_with_its_path(line: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(BASE + "[daemon]\n" + line + "\n")


def test_listen_addresses_parse_ipv4_ipv6_and_a_bare_port() -> None:
    assert parse_listen("0.0.0.0:9187") == ("0.0.0.0", 9187)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen(":9187") == ("0.0.0.0", 9187)
