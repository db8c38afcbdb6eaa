"""/readyz is not ready while a configured age recipient is not a public key (every backup would fail)."""

from __future__ import annotations

from pathlib import Path

from opskit.config.load import parse_config
from tests.daemon.test_scheduler import FakeAction, fake, running_daemon  # noqa: F401 - fake is a fixture


def test_readyz_names_a_bad_age_recipient(tmp_path: Path, pg_database: str, fake: FakeAction) -> None:  # noqa: F811
    config = parse_config(
        f'[storages.local]\nurl = "file://{tmp_path}/backups"\n'
        f'[targets.app]\ndsn = "{pg_database}"\n'
        f'[daemon]\ncontrol_dsn = "{pg_database}"\nledger_table = "runs"\n'
        '[encryption]\nrecipients = ["age1typo"]\n'
    )
    with running_daemon(tmp_path, config) as daemon:
        ready, detail = daemon.readyz()
        assert not ready
        assert (
            "encryption recipient 'age1typo' is not a valid age public key" in detail["checks"]["encryption_recipients"]
        )
        assert detail["checks"]["control_database"] == "ok"
