"""A secret written as a reference to a manager opskit does not know is a config error, never a literal password."""

from __future__ import annotations

import pytest

from opskit.config.load import parse_config
from opskit.core.errors import ConfigError

BASE = '[storages.local]\nurl = "file:///tmp/opskit-unit-never-written"\n'


def test_an_unknown_secret_scheme_is_refused_at_load_naming_the_key_not_the_value() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + '[targets.app]\ndsn = "dbname=app"\npassword = "vault://app/db"\n')
    assert caught.value.exit_code == 2
    text = caught.value.one_line()
    assert "At 'targets.app.password': 'vault://' is not a secret scheme opskit knows" in text
    assert "app/db" not in text


@pytest.mark.parametrize("value", ["env:APP_DB_PASSWORD", "s3cr3t-with:colon", "aws-sm://prod/db"])
def test_known_references_and_plain_literals_still_load(value: str) -> None:
    config = parse_config(BASE + f'[targets.app]\ndsn = "dbname=app"\npassword = "{value}"\n')
    assert config.targets["app"].password is not None


def test_web_urls_stay_literal_secrets_for_notifications() -> None:
    config = parse_config(
        BASE + '[targets.app]\ndsn = "dbname=app"\n[notify]\nwebhooks = ["https://hooks.example/x"]\n'
    )
    assert config.notify is not None
