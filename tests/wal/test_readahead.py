"""While a data directory recovers, ``opskit wal fetch`` leaves a reader behind that keeps the next segments ready.

The restore_command is run as PostgreSQL runs it (through /bin/sh, in the data directory, with
%f and %p replaced), so each test sees what the server would: the file in place and exit 0,
or exit 1 for a file the archive lacks. The reader is a real background process; every test
ends recovery (removes recovery.signal) or waits for it to go, and checks nothing is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opskit.wal import archive, readahead
from tests.wal.test_archive import opskit, wal_file, write_config

SEGMENT_SIZE = 16 * 1024 * 1024
FIRST = 3  # segments 000000010000000000000003 .. are archived


def segment(number: int, timeline: int = 1) -> str:
    return f"{timeline:08X}{0:08X}{number:08X}"


class Recovery:
    """A data directory in recovery beside an archive, and its restore_command run through the shell."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.config = write_config(tmp_path)
        self.data_dir = tmp_path / "data"
        (self.data_dir / "pg_wal").mkdir(parents=True)
        (self.data_dir / "recovery.signal").touch()
        self.spool = self.data_dir / "pg_wal" / archive.PREFETCH_DIR
        self.contents: dict[str, bytes] = {}
        fetch = " ".join([sys.executable, "-m", "opskit", "--config", str(self.config), "wal", "fetch", "%f", "%p"])
        self.command = archive.with_read_ahead(fetch)

    def archive(self, name: str) -> bytes:
        data = os.urandom(4096) + b"\0" * (SEGMENT_SIZE - 4096)
        path = wal_file(self.tmp_path / "incoming", data, name)
        assert opskit(self.config, "wal", "push", str(path)).returncode == 0
        path.unlink()
        self.contents[name] = data
        return data

    def restore(self, name: str, into: str = "RECOVERYXLOG") -> subprocess.CompletedProcess[str]:
        line = self.command.replace("%f", name).replace("%p", f"pg_wal/{into}")
        return subprocess.run(["/bin/sh", "-c", line], cwd=self.data_dir, capture_output=True, text=True, timeout=120)

    def restored(self, into: str = "RECOVERYXLOG") -> bytes:
        return (self.data_dir / "pg_wal" / into).read_bytes()

    def reader_pid(self) -> int | None:
        try:
            return int(json.loads((self.spool / readahead.STATE_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def end(self) -> None:
        """End recovery as the server does (the signal file goes) and wait for the reader to leave."""
        (self.data_dir / "recovery.signal").unlink(missing_ok=True)
        wait_until(lambda: not self.spool.exists(), "the read-ahead directory to be removed")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def recovery(tmp_path: Path) -> Iterator[Recovery]:
    state = Recovery(tmp_path)
    yield state
    pid = state.reader_pid()
    state.end()
    if pid is not None:
        wait_until(lambda: not alive(pid), "the reader to exit")


def test_the_reader_keeps_the_next_segments_ready_and_the_shell_hands_them_over(recovery: Recovery) -> None:
    for number in range(FIRST, FIRST + 5):
        recovery.archive(segment(number))

    first = recovery.restore(segment(FIRST))

    assert first.returncode == 0, first.stderr
    assert recovery.restored() == recovery.contents[segment(FIRST)]
    wait_until(lambda: (recovery.spool / segment(FIRST + 4)).exists(), "the read-ahead of the 4 next segments")
    # The archive's copies gone: what follows can only come from the reader.
    for number in range(FIRST + 1, FIRST + 5):
        (recovery.tmp_path / "archive" / "app" / "wal" / f"{segment(number)}.zst").unlink()
    for number in range(FIRST + 1, FIRST + 5):
        taken = recovery.restore(segment(number))
        assert taken.returncode == 0, taken.stderr
        assert recovery.restored() == recovery.contents[segment(number)]


def test_the_end_of_the_archive_is_answered_from_the_reader_and_the_last_segment_offered_again(
    recovery: Recovery,
) -> None:
    for number in (FIRST, FIRST + 1):
        recovery.archive(segment(number))
    assert recovery.restore(segment(FIRST)).returncode == 0
    marker = recovery.spool / (segment(FIRST + 2) + readahead.ABSENT_SUFFIX)
    wait_until(marker.exists, "the reader to mark the end of the archive")
    assert recovery.restore(segment(FIRST + 1)).returncode == 0

    # Recovery ends as PostgreSQL ends it: the miss twice, the last segment between, the history files.
    wait_until(lambda: (recovery.spool / ("00000002.history" + readahead.ABSENT_SUFFIX)).exists(), "history markers")
    calls = [
        recovery.restore(segment(FIRST + 2)),
        recovery.restore(segment(FIRST + 1)),
        recovery.restore(segment(FIRST + 2)),
        recovery.restore(segment(FIRST + 1)),
        recovery.restore("00000002.history", into="RECOVERYHISTORY"),
    ]

    assert [c.returncode for c in calls] == [1, 0, 1, 0, 1]
    assert all(c.stdout == c.stderr == "" for c in calls)  # the shell answered each: no opskit ran
    assert recovery.restored() == recovery.contents[segment(FIRST + 1)]
    assert not (recovery.data_dir / "pg_wal" / "RECOVERYHISTORY").exists()


def test_a_segment_archived_after_the_reader_saw_the_end_is_found(recovery: Recovery) -> None:
    recovery.archive(segment(FIRST))
    assert recovery.restore(segment(FIRST)).returncode == 0
    marker = recovery.spool / (segment(FIRST + 1) + readahead.ABSENT_SUFFIX)
    wait_until(marker.exists, "the reader to mark the end of the archive")
    assert recovery.restore(segment(FIRST + 1)).returncode == 1  # answered from the marker

    data = recovery.archive(segment(FIRST + 1))  # the primary archived it meanwhile
    wait_until(lambda: (recovery.spool / segment(FIRST + 1)).exists(), "the reader to look at the archive again")
    found = recovery.restore(segment(FIRST + 1))

    assert found.returncode == 0, found.stderr
    assert recovery.restored() == data


def test_an_expired_marker_is_not_believed(recovery: Recovery) -> None:
    data = recovery.archive(segment(FIRST))
    recovery.spool.mkdir()
    # Left by a reader that died an hour ago (a crash): the segment is archived by now.
    (recovery.spool / (segment(FIRST) + readahead.ABSENT_SUFFIX)).write_text(str(int(time.time()) - 3600))

    result = recovery.restore(segment(FIRST))

    assert result.returncode == 0, result.stderr
    assert recovery.restored() == data


def test_the_reader_leaves_when_recovery_ends_and_takes_its_directory_with_it(recovery: Recovery) -> None:
    for number in range(FIRST, FIRST + 3):
        recovery.archive(segment(number))
    assert recovery.restore(segment(FIRST)).returncode == 0
    wait_until(lambda: recovery.reader_pid() is not None, "the reader's state file")
    pid = recovery.reader_pid()
    assert pid is not None and alive(pid)

    recovery.end()

    wait_until(lambda: not alive(pid), "the reader to exit")
    assert sorted(p.name for p in (recovery.data_dir / "pg_wal").iterdir()) == ["RECOVERYXLOG"]


def test_a_fetch_on_another_timeline_moves_the_reader_there(recovery: Recovery) -> None:
    recovery.archive(segment(FIRST))
    recovery.archive(segment(FIRST + 1))
    switched = [recovery.archive(segment(number, timeline=2)) for number in (FIRST + 1, FIRST + 2)]
    assert recovery.restore(segment(FIRST)).returncode == 0

    # After the switch (a promotion), recovery asks for timeline 2's segments.
    first = recovery.restore(segment(FIRST + 1, timeline=2))
    wait_until(lambda: (recovery.spool / segment(FIRST + 2, timeline=2)).exists(), "the read-ahead on timeline 2")
    second = recovery.restore(segment(FIRST + 2, timeline=2))

    assert first.returncode == 0 and second.returncode == 0
    assert recovery.restored() == switched[1]
    assert not (recovery.spool / segment(FIRST + 1)).exists()  # timeline 1's read-ahead dropped


def test_a_corrupt_segment_ahead_is_never_marked_absent_and_its_fetch_exits_above_125(recovery: Recovery) -> None:
    for number in range(FIRST, FIRST + 3):
        recovery.archive(segment(number))
    stored = recovery.tmp_path / "archive" / "app" / "wal" / f"{segment(FIRST + 1)}.zst"
    damaged = bytearray(stored.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    assert recovery.restore(segment(FIRST)).returncode == 0

    # The reader stops at the segment it cannot read (its directory goes), marking nothing.
    wait_until(lambda: not recovery.spool.exists(), "the reader to stop at the corrupt segment")
    refused = recovery.restore(segment(FIRST + 1))

    assert refused.returncode == 128 + 5, refused.stderr  # PostgreSQL aborts recovery instead of promoting
    assert f"archived WAL file {segment(FIRST + 1)}" in refused.stderr
    assert recovery.restored() == recovery.contents[segment(FIRST)]  # nothing written in its place


def test_the_reader_leaves_when_the_server_it_served_stops_in_the_middle_of_recovery(recovery: Recovery) -> None:
    for number in range(FIRST, FIRST + 3):
        recovery.archive(segment(number))
    pid_file = recovery.data_dir / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    assert recovery.restore(segment(FIRST)).returncode == 0
    wait_until(lambda: recovery.reader_pid() is not None, "the reader's state file")
    pid = recovery.reader_pid()
    assert pid is not None

    pid_file.unlink()  # the server aborted recovery: recovery.signal stays, nothing will ask again

    wait_until(lambda: not recovery.spool.exists(), "the reader to remove its directory", timeout=5)
    wait_until(lambda: not alive(pid), "the reader to exit", timeout=5)
    assert (recovery.data_dir / "recovery.signal").exists()
