"""Durations and sizes as written in configs and printed to people."""

from datetime import timedelta

import pytest

from opskit.core.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("90m", timedelta(minutes=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_durations_parse_from_their_short_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "soon", "5", "1h 2x", "h1"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes_accept_decimal_and_binary_units() -> None:
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("1GB") == 10**9
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_durations_and_sizes_print_for_people() -> None:
    assert format_duration(timedelta(days=3, hours=4, minutes=5)) == "3d 4h"
    assert format_duration(timedelta(minutes=125)) == "2h 5m"
    assert format_duration(42) == "42s"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(12) == "12 B"
