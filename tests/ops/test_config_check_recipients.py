"""An age recipient that is not a public key fails config check even where no identity is configured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from opskit.cli import main
from opskit.ops.config_check import FAIL
from tests.ops.test_config_check import check, result


def test_a_bad_recipient_without_an_identity_fails_the_check_with_exit_2(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "targets": {"app": {"dsn": "host=127.0.0.1 port=5432 user=postgres dbname=postgres"}},
        "storages": {"local": {"url": f"file://{tmp_path / 'backups'}"}},
        "tools": {"state_dir": str(tmp_path / "state")},
        "encryption": {"recipients": ["age1typo"]},
    }
    report = check(raw)

    recipients = result(report, "encryption recipients")
    assert recipients.status == FAIL
    assert "encryption recipient 'age1typo' is not a valid age public key" in recipients.detail
    assert report.exit_code == 2


def test_config_check_on_the_command_line_exits_2_for_a_bad_recipient(tmp_path: Path) -> None:
    config = tmp_path / "opskit.toml"
    config.write_text(
        '[targets.app]\ndsn = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"\n'
        f'[storages.local]\nurl = "file://{tmp_path / "backups"}"\n'
        f'[tools]\nstate_dir = "{tmp_path / "state"}"\n'
        '[encryption]\nrecipients = ["age1typo"]\n',
        encoding="utf-8",
    )
    outcome = CliRunner().invoke(main, ["--config", str(config), "config", "check"])
    assert outcome.exit_code == 2, outcome.output
    assert "age1typo" in outcome.output
