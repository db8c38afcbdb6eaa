"""Section's typed getters: a default comes back for a missing or rejected value, None for a required one."""

from __future__ import annotations

from datetime import timedelta

from opskit.config.schema import ConfigErrors, Section


def section(**raw: object) -> Section:
    return Section(raw, "t", ConfigErrors())


def test_a_required_key_that_is_missing_or_of_the_wrong_kind_is_an_error_and_none() -> None:
    s = section(url=5)
    assert s.str("url") is None
    assert s.str("name") is None
    assert s.errors.problems == ["At 't.url': must be a string, not an integer", "At 't.name': is required (a string)"]


def test_a_getter_with_a_default_returns_it_for_a_missing_or_rejected_value() -> None:
    s = section(jobs=0, grace="soon", part="lots", flag=True)
    assert s.str("missing", "x") == "x"
    assert s.int("jobs", 1, minimum=1) == 1
    assert s.int("flag", 3) == 3  # a TOML true is not a number
    assert s.duration("grace", timedelta(minutes=5)) == timedelta(minutes=5)
    assert s.size("part", None) is None
    assert len(s.errors.problems) == 4


def test_a_required_integer_out_of_range_is_an_error_and_none() -> None:
    s = section(level=99)
    assert s.int("level", maximum=19) is None
    assert s.errors.problems == ["At 't.level': must be at most 19, not 99"]


def test_values_are_converted() -> None:
    s = section(level=3, grace="90m", part="64MiB", names=["a", "b"])
    assert s.int("level", minimum=1) == 3
    assert s.duration("grace") == timedelta(minutes=90)
    assert s.size("part") == 64 * 1024**2
    assert s.str_list("names") == ("a", "b")
    s.finish()
    assert s.errors.problems == []
