"""How ``restore --pitr`` reads a failed recovery: the server log's reason, the fetch's refusal, the chain's end.

The log lines are PostgreSQL 15.20's, from ``opskit-recovery.log`` of restores of a damaged archive.
"""

from __future__ import annotations

from pathlib import Path

from opskit.core.errors import RestoreFailed, UnreachableError, VerificationFailed
from opskit.restore import pitr_server, pitr_settings
from opskit.restore.pitr_chain import ArchivedChain
from opskit.restore.pitr_model import PitrResult, RecoveryTarget

SEGMENT = 16 * 1024 * 1024

REFUSED = """\
2026-12-04 18:32:31.490 UTC LOG:  restored log file "000000010000000000000003" from archive
opskit: error: archived WAL file 000000010000000000000004 does not decompress: zstd decompressor error
2026-12-04 18:32:31.713 UTC FATAL:  could not restore file "000000010000000000000004" from archive: child process exited with exit code 133
2026-12-04 18:32:31.716 UTC LOG:  startup process (PID 5301) exited with exit code 1
2026-12-04 18:32:31.716 UTC LOG:  terminating any other active server processes
2026-12-04 18:32:31.720 UTC LOG:  shutting down
2026-12-04 18:32:31.741 UTC LOG:  database system is shut down
"""


def result_in(tmp_path: Path, log: str) -> PitrResult:
    (tmp_path / pitr_settings.RECOVERY_LOG).write_text(log)
    return PitrResult(manifest=None, pgdata=str(tmp_path), target=RecoveryTarget())  # type: ignore[arg-type]


def test_a_segment_the_fetch_refused_as_corrupt_is_exit_5_naming_it_and_the_fetchs_reason(tmp_path: Path) -> None:
    error = pitr_server.server_failure("recovery failed", tmp_path, result_in(tmp_path, REFUSED))

    assert isinstance(error, VerificationFailed) and error.exit_code == 5
    assert error.message == (
        "recovery to the end of the archived WAL stopped at WAL file 000000010000000000000004: wal fetch refused it:"
        " archived WAL file 000000010000000000000004 does not decompress: zstd decompressor error"
    )


def test_a_storage_the_fetch_could_not_reach_is_exit_3(tmp_path: Path) -> None:
    log = REFUSED.replace("exit code 133", "exit code 131")

    error = pitr_server.server_failure("recovery failed", tmp_path, result_in(tmp_path, log))

    assert isinstance(error, UnreachableError) and error.exit_code == 3


def test_another_failure_carries_the_logs_fatal_line_not_the_shutdown_after_it(tmp_path: Path) -> None:
    log = REFUSED.replace(
        'could not restore file "000000010000000000000004" from archive: child process exited with exit code 133',
        "recovery ended before configured recovery target was reached",
    )

    error = pitr_server.server_failure("recovery failed", tmp_path, result_in(tmp_path, log))

    assert isinstance(error, RestoreFailed)
    assert error.message == "recovery failed: FATAL: recovery ended before configured recovery target was reached"


def chain(newest: str, missing: tuple[str, ...] = ()) -> ArchivedChain:
    return ArchivedChain("b1", newest, missing, SEGMENT, newest_timeline=2, switches=((1, 5),))


def test_replay_into_the_newest_segment_or_past_its_switch_reaches_the_chains_end() -> None:
    newest = chain("000000020000000000000007")

    assert newest.shortfall(7) is None
    assert newest.shortfall(8) is None


def test_replay_short_of_the_newest_names_the_first_missing_segment_or_the_next_one_on_its_timeline() -> None:
    gapped = chain("000000020000000000000007", missing=("000000020000000000000006",))

    assert gapped.shortfall(5) == ("000000020000000000000006", True)
    assert chain("000000020000000000000007").shortfall(3) == ("000000010000000000000004", False)
    assert chain("000000020000000000000007").shortfall(4) == ("000000020000000000000005", False)
