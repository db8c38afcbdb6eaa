"""Run records: counted from the listing, folded into a tally by prune, and a count that never goes down."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from opskit.catalog.runs import RUNS_DIR, RunRecord, count_runs, fold_runs, write_run
from opskit.core.errors import StorageError
from opskit.storage.base import Storage, StorageConfig
from opskit.storage.registry import open_storage

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def record(days_ago: float, result: str = "success", verb: str = "backup") -> RunRecord:
    finished = NOW - timedelta(days=days_ago)
    return RunRecord(
        target="app",
        verb=verb,
        result=result,
        started_at=finished - timedelta(seconds=5),
        finished_at=finished,
        exit_code=0,
    )


def run_keys(store: Storage) -> list[str]:
    return sorted(info.key.rsplit("/", 1)[-1] for info in store.list(f"app/{RUNS_DIR}/"))


@pytest.fixture
def store(local_storage: StorageConfig) -> Storage:
    return open_storage(local_storage)


def test_folding_old_records_keeps_every_count_and_deletes_only_the_old_records(store: Storage) -> None:
    for days, result in [(200, "failure"), (120, "success"), (100, "success"), (10, "failure"), (1, "success")]:
        write_run(store, record(days, result))
    write_run(store, record(150, "success", verb="prune"))
    before = {verb: count_runs(store, "app", verb) for verb in ("backup", "prune")}

    folded = fold_runs(store, "app", NOW - timedelta(days=90))

    assert len(folded) == 4
    assert {verb: count_runs(store, "app", verb) for verb in ("backup", "prune")} == before
    names = run_keys(store)
    assert len([n for n in names if not n.startswith("tally-")]) == 2  # the 10- and 1-day-old records
    assert len([n for n in names if n.startswith("tally-")]) == 1


def test_a_second_fold_adds_to_the_tally_and_removes_the_older_tally(store: Storage) -> None:
    for days in (300, 200, 100):
        write_run(store, record(days, "failure"))
    fold_runs(store, "app", NOW - timedelta(days=250))
    write_run(store, record(5, "success"))

    fold_runs(store, "app", NOW - timedelta(days=50))

    assert count_runs(store, "app", "backup") == {"failure": 3, "success": 1}
    names = run_keys(store)
    assert [n for n in names if n.startswith("tally-")] and len([n for n in names if n.startswith("tally-")]) == 1
    assert len(names) == 2  # the tally and the 5-day-old record


def test_a_dry_run_folds_nothing(store: Storage) -> None:
    write_run(store, record(100))
    assert len(fold_runs(store, "app", NOW - timedelta(days=90), dry_run=True)) == 1
    assert len(run_keys(store)) == 1 and count_runs(store, "app", "backup") == {"success": 1}


def test_records_left_behind_by_a_killed_prune_are_not_counted_twice_and_go_next_time(store: Storage) -> None:
    for days in (200, 100):
        write_run(store, record(days))
    # A prune that stored its tally and was killed before deleting: simulate by restoring a record.
    folded = fold_runs(store, "app", NOW - timedelta(days=90))
    leftover = folded[0]
    store.create(leftover, json.dumps({"kind": "run"}).encode())

    assert count_runs(store, "app", "backup") == {"success": 2}
    assert fold_runs(store, "app", NOW - timedelta(days=90)) == [leftover]
    assert count_runs(store, "app", "backup") == {"success": 2}
    assert [n for n in run_keys(store) if not n.startswith("tally-")] == []


def test_a_damaged_tally_is_an_error_not_a_count_that_restarts(store: Storage) -> None:
    write_run(store, record(100))
    fold_runs(store, "app", NOW - timedelta(days=90))
    (tally,) = [info.key for info in store.list(f"app/{RUNS_DIR}/")]
    store.delete(tally)
    store.create(tally, b"not json")
    with pytest.raises(StorageError, match=r"run tally .* is damaged"):
        count_runs(store, "app", "backup")
