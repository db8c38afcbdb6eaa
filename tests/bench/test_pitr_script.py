"""bench/pitr.py imports, parses its options, and its pure helpers hold (no timed runs: benchmarks are not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def pitr() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        import pitr as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_defaults_fit_the_time_budget_and_five_minutes_is_the_issues_run(pitr: ModuleType) -> None:
    args = pitr.parse_args([])
    assert (args.scale, args.rss_scale, args.runs, args.pgbench_seconds) == (0.5, 0.1, 3, 60)
    assert args.cases == {1, 2, 3}

    assert pitr.parse_args(["--five-minutes"]).pgbench_seconds == 300
    quick = pitr.parse_args(["--quick", "--cases", "3"])
    assert (quick.runs, quick.pgbench_seconds, quick.cases) == (1, 10, {3})


def test_help_runs_without_a_server() -> None:
    result = subprocess.run([sys.executable, str(BENCH / "pitr.py"), "--help"], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert "--five-minutes" in result.stdout


def test_archive_lag_is_measured_from_the_end_of_the_newest_complete_segment(pitr: ModuleType, tmp_path: Path) -> None:
    assert pitr.segment_end("000000010000000000000000") == 16 * 1024 * 1024
    assert pitr.segment_end("0000000100000001000000FF") == (0x100 + 0x100) * 16 * 1024 * 1024
    for name in ("000000010000000000000003.zst", "000000010000000000000004.partial.zst", "00000002.history.zst"):
        (tmp_path / name).write_bytes(b"")

    assert pitr.newest_shipped_end(tmp_path) == 4 * 16 * 1024 * 1024
    assert pitr.newest_shipped_end(tmp_path / "missing") == 0
