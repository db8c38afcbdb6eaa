"""Where recovery stopped, read from the scratch server's log, and the "recovery reached the target" check.

The log lines are PostgreSQL 15.20's, copied from ``opskit-recovery.log`` of scratch servers
kept with ``opskit drill restore --pitr --keep`` (the xid target and the time zone: a copy
restored without ``--start`` and recovered by hand with ``recovery_target_xid`` and
``timezone = 'Asia/Kolkata'``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opskit.drill.pitr import RecoveryStop, recovery_stop, time_target_check

# A drill to 04:54:48.992633, between two markers: stopped before the later marker's commit.
BETWEEN_MARKERS = """\
2026-12-02 04:54:51.601 UTC LOG:  starting point-in-time recovery to 2026-12-02 04:54:48.992633+00
2026-12-02 04:54:51.601 UTC LOG:  starting backup recovery with redo LSN 0/2000028, checkpoint LSN 0/2000060, on timeline ID 1
2026-12-02 04:54:52.173 UTC LOG:  redo starts at 0/2000028
2026-12-02 04:54:52.177 UTC LOG:  consistent recovery state reached at 0/2000100
2026-12-02 04:54:52.417 UTC LOG:  recovery stopping before commit of transaction 738, time 2026-12-02 04:54:49.04304+00
2026-12-02 04:54:52.417 UTC LOG:  redo done at 0/3000920 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.24 s
2026-12-02 04:54:52.417 UTC LOG:  last completed transaction was at log time 2026-12-02 04:54:48.942277+00
2026-12-02 04:54:53.033 UTC LOG:  selected new timeline ID: 2
2026-12-02 04:54:53.264 UTC LOG:  archive recovery complete
"""
MOMENT = datetime(2026, 12, 2, 4, 54, 48, 992633, tzinfo=UTC)
LAST_REPLAYED = datetime(2026, 12, 2, 4, 54, 48, 942277, tzinfo=UTC)
STOPPED_AT = datetime(2026, 12, 2, 4, 54, 49, 43040, tzinfo=UTC)

# The first transaction after the moment rolled back.
BEFORE_AN_ABORT = (
    "2026-12-02 04:55:46.309 UTC LOG:  recovery stopping before abort of transaction 731,"
    " time 2026-12-02 04:55:44.0222+00\n"
)

# recovery_target_xid (inclusive, the default) on a server whose timezone is Asia/Kolkata.
AFTER_AN_XID_IN_KOLKATA = """\
2026-12-02 04:55:48.327 UTC LOG:  starting point-in-time recovery to XID 733
2026-12-02 04:55:48.893 UTC LOG:  recovery stopping after commit of transaction 733, time 2026-12-02 10:25:44.131839+05:30
2026-12-02 04:55:48.893 UTC LOG:  last completed transaction was at log time 2026-12-02 10:25:44.131839+05:30
"""

# A drill to the window's end: no transaction after it is archived, so the first start fails
# and the drill starts the server again without a target (pg_ctl -l appends to the same log).
WAL_ENDED_FIRST = """\
2026-12-02 04:54:59.380 UTC LOG:  starting point-in-time recovery to 2026-12-02 04:54:50.37244+00
2026-12-02 04:55:00.280 UTC LOG:  redo done at 0/3000F78 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.43 s
2026-12-02 04:55:00.280 UTC LOG:  last completed transaction was at log time 2026-12-02 04:54:49.949571+00
2026-12-02 04:55:00.280 UTC FATAL:  recovery ended before configured recovery target was reached
2026-12-02 04:55:00.282 UTC LOG:  startup process (PID 25495) exited with exit code 1
2026-12-02 04:55:00.638 UTC LOG:  starting archive recovery
2026-12-02 04:55:01.488 UTC LOG:  redo done at 0/3000F78 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.43 s
2026-12-02 04:55:01.489 UTC LOG:  last completed transaction was at log time 2026-12-02 04:54:49.949571+00
2026-12-02 04:55:02.198 UTC LOG:  archive recovery complete
"""

# A drill to the end of the archive: no target, no stopping line.
NO_TARGET = """\
2026-12-02 04:54:55.505 UTC LOG:  starting archive recovery
2026-12-02 04:54:56.712 UTC LOG:  redo done at 0/3000F78 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.63 s
2026-12-02 04:54:56.712 UTC LOG:  last completed transaction was at log time 2026-12-02 04:54:49.949571+00
"""


def test_a_stop_before_a_commit_names_the_transaction_and_its_time() -> None:
    assert recovery_stop(BETWEEN_MARKERS) == RecoveryStop(before=True, kind="commit", xid=738, time=STOPPED_AT)


def test_a_stop_before_an_abort_is_read_the_same_way() -> None:
    stop = recovery_stop(BEFORE_AN_ABORT)

    assert stop is not None and stop.before and stop.kind == "abort" and stop.xid == 731
    assert stop.time == datetime(2026, 12, 2, 4, 55, 44, 22200, tzinfo=UTC)


def test_a_stop_after_a_commit_in_another_time_zone_is_the_same_instant_in_utc() -> None:
    stop = recovery_stop(AFTER_AN_XID_IN_KOLKATA)

    assert stop is not None and not stop.before and stop.xid == 733
    assert stop.time == datetime(2026, 12, 2, 4, 55, 44, 131839, tzinfo=UTC)
    assert stop.describe() == "recovery stopped after commit of transaction 733 at 2026-12-02T04:55:44.131839Z"


def test_a_log_without_a_stopping_line_has_no_stop() -> None:
    assert recovery_stop(NO_TARGET) is None
    assert recovery_stop(WAL_ENDED_FIRST) is None
    assert recovery_stop("") is None


def test_recovery_that_stopped_before_the_first_commit_after_the_moment_reached_it() -> None:
    check = time_target_check(MOMENT, LAST_REPLAYED, "0/3000920", BETWEEN_MARKERS)

    assert check.ok and check.name == "recovery reached the target"
    assert check.actual == (
        "last transaction 2026-12-02T04:54:48.942277Z, LSN 0/3000920;"
        " recovery stopped before commit of transaction 738 at 2026-12-02T04:54:49.043040Z"
    )


def test_recovery_that_stopped_at_or_before_the_moment_stopped_too_early_and_fails() -> None:
    # The same log for a later moment: the transaction it stopped before should have been replayed.
    check = time_target_check(STOPPED_AT + timedelta(seconds=1), LAST_REPLAYED, "0/3000920", BETWEEN_MARKERS)

    assert not check.ok
    assert "recovery stopped before commit of transaction 738 at 2026-12-02T04:54:49.043040Z" in str(check.actual)
    assert not time_target_check(STOPPED_AT, LAST_REPLAYED, "0/3000920", BETWEEN_MARKERS).ok


def test_a_replayed_transaction_after_the_moment_fails_even_with_a_stopping_line() -> None:
    check = time_target_check(LAST_REPLAYED - timedelta(microseconds=1), LAST_REPLAYED, "0/3000920", BETWEEN_MARKERS)

    assert not check.ok


def test_a_stop_after_a_transaction_does_not_count_for_a_time_target() -> None:
    before_the_commit = datetime(2026, 12, 2, 4, 55, 44, tzinfo=UTC)

    assert not time_target_check(before_the_commit, None, "0/30005B0", AFTER_AN_XID_IN_KOLKATA).ok


def test_when_the_wal_ended_before_the_moment_the_check_passes_and_says_so() -> None:
    moment = datetime(2026, 12, 2, 4, 54, 50, 372440, tzinfo=UTC)
    last = datetime(2026, 12, 2, 4, 54, 49, 949571, tzinfo=UTC)

    check = time_target_check(moment, last, "0/4000000", WAL_ENDED_FIRST)

    assert check.ok
    assert str(check.actual).endswith(
        "; no archived transaction after the moment: the WAL ended first, recovered to its end"
    )


def test_a_log_that_names_no_stop_and_no_early_end_fails_the_check() -> None:
    check = time_target_check(MOMENT, LAST_REPLAYED, "0/3000920", NO_TARGET)

    assert not check.ok
    assert str(check.actual).endswith("; opskit-recovery.log names no transaction recovery stopped at")
