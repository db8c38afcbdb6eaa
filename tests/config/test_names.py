"""Target and storage names must be storable as one object-key segment."""

from __future__ import annotations

import pytest

from opskit.config.load import parse_config
from opskit.config.names import name_problem
from opskit.core.errors import ConfigError


@pytest.mark.parametrize("name", ["app", "App_2", "db.prod", "eu-west-1", "0", "x" * 64])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "/a", "a\\b", "a b", "-x", ".hidden", "tab\there", "é", "x" * 65]
)
def test_names_that_cannot_be_a_key_segment_are_refused(name: str) -> None:
    assert name_problem(name) is not None


def test_the_error_names_the_quoted_path_of_each_bad_name() -> None:
    text = '[storages."s/3"]\nurl = "file:///tmp/x"\n[targets."."]\ndsn = ""\nstorages = ["s/3"]\n'

    with pytest.raises(ConfigError) as caught:
        parse_config(text)

    assert any(p.startswith("At 'storages.\"s/3\"': ") for p in caught.value.problems)
    assert any(p.startswith("At 'targets.\".\"': ") for p in caught.value.problems)
