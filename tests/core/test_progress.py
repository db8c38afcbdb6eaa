"""The terminal progress line: bytes and rate, plus percent and ETA when the size is known."""

from __future__ import annotations

import pytest

from opskit.core.progress import ByteProgress, format_eta


def test_with_a_known_size_the_line_shows_percent_and_eta() -> None:
    progress = ByteProgress("restore 20260101T000000Z", enabled=False, expected=4 * 1024**3)
    progress(1024**3)
    started = progress._started
    line = progress.line(started + 10.0)  # 1 GiB in 10 s: 3 GiB left at ~102 MiB/s is 30 s
    assert line == "restore 20260101T000000Z: 1.0 GiB of 4.0 GiB (25%), 102.4 MiB/s, ETA 0:30"


def test_without_a_size_the_line_shows_bytes_and_rate_only() -> None:
    progress = ByteProgress("backup app", enabled=False)
    progress(10 * 1024**2)
    assert progress.line(progress._started + 1.0) == "backup app: 10.0 MiB, 10.0 MiB/s"


def test_the_percentage_never_claims_100_before_the_end() -> None:
    progress = ByteProgress("restore x", enabled=False, expected=100)
    progress(150)  # more than the manifest said (a wrong size must not print 150%)
    assert "(99%)" in progress.line(progress._started + 1.0) and "ETA 0:00" in progress.line(progress._started + 1.0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (3599, "59:59"), (3600 * 25 + 61, "25:01:01")]
)
def test_eta_reads_like_rsync(seconds: float, text: str) -> None:
    assert format_eta(seconds) == text


def test_a_drawn_line_goes_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    with ByteProgress("copy app", enabled=True, interval=0.0, expected=2048) as progress:
        progress(1024)
    captured = capsys.readouterr()
    assert captured.out == "" and "copy app: 1.0 KiB of 2.0 KiB (50%)" in captured.err
