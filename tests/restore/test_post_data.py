"""The post-data scheduler: what each entry waits for, and the order its batches run in.

The plan follows pg_restore's rules (``repoint_table_dependencies``, ``has_lock_conflicts``),
checked here on a TOC built by hand and on a real archive's TOC.
"""

from __future__ import annotations

import subprocess
import threading
import time

from opskit.pg import toc as dump_toc
from opskit.pg.toc import ArchiveToc, TocEntry
from opskit.restore.post_data import PostDataScheduler, plan
from tests.databases import dsn_for, run_sql


def entry(dump_id: int, desc: str, section: str, *dependencies: int, tag: str = "") -> TocEntry:
    return TocEntry(dump_id, desc, tag or f"e{dump_id}", "public", section, desc == "TABLE DATA", None, dependencies)


# Two tables, a and b; b references a.
TOC = ArchiveToc(
    (1, 14, 0),
    [
        entry(1, "TABLE", "pre-data", tag="a"),
        entry(2, "TABLE", "pre-data", tag="b"),
        entry(3, "TABLE DATA", "data", 1, tag="a"),
        entry(4, "TABLE DATA", "data", 2, tag="b"),
        entry(5, "CONSTRAINT", "post-data", 1, tag="a_pkey"),
        entry(6, "INDEX", "post-data", 2, tag="b_idx"),
        entry(7, "COMMENT", "post-data", 6, tag="INDEX b_idx"),
        entry(8, "FK CONSTRAINT", "post-data", 2, 5, tag="b_a_fkey"),
        entry(9, "EVENT TRIGGER", "post-data", tag="audit"),
    ],
)


def test_each_post_data_entry_waits_for_its_tables_data_and_the_entries_it_depends_on() -> None:
    planned = {e.dump_id: e for e in plan(TOC)}

    assert planned[5].waits_data == {3} and planned[5].exclusive
    assert planned[6].waits_data == {4} and not planned[6].exclusive
    assert planned[7].waits_entries == {6} and not planned[7].waits_all_data
    assert planned[8].waits_data == {4} and planned[8].waits_entries == {5} and planned[8].tables == {2}
    # Nothing known about what it touches: it waits for all data, as in pg_restore's serial order.
    assert planned[9].waits_all_data


def run(events: list[tuple[str, object]], lock: threading.Lock, pause: float = 0.0) -> object:
    def run_batch(ids: list[int]) -> None:
        with lock:
            events.append(("batch", tuple(ids)))
        time.sleep(pause)

    return run_batch


def test_a_table_s_indexes_start_once_its_data_is_in_and_the_foreign_key_once_both_are() -> None:
    events: list[tuple[str, object]] = []
    lock = threading.Lock()
    scheduler = PostDataScheduler(TOC, run(events, lock), runners=2)  # type: ignore[arg-type]

    scheduler.table_loaded(3)
    deadline = time.monotonic() + 5
    while not events and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        events.append(("loaded", 4))
    scheduler.table_loaded(4)
    scheduler.finish()

    assert events[0] == ("batch", (5,))  # a's primary key, before b's data was in
    batches = [ids for kind, ids in events if kind == "batch"]
    ran = [dump_id for ids in batches for dump_id in ids]  # type: ignore[attr-defined]
    assert sorted(ran) == [5, 6, 7, 8, 9]
    assert (6, 7) in [tuple(ids[i : i + 2]) for ids in batches for i in range(len(ids))]  # type: ignore[arg-type,index]
    assert ran.index(8) > ran.index(5) and events.index(("loaded", 4)) < ran.index(8) + 1


def test_two_batches_that_lock_the_same_table_never_run_at_once() -> None:
    toc = ArchiveToc(
        (1, 14, 0),
        [
            entry(1, "TABLE", "pre-data", tag="a"),
            entry(2, "TABLE DATA", "data", 1, tag="a"),
            entry(3, "CONSTRAINT", "post-data", 1, tag="a_pkey"),
            entry(4, "INDEX", "post-data", 1, tag="a_idx"),
            entry(5, "TRIGGER", "post-data", 1, tag="a_trigger"),
        ],
    )
    running: list[int] = []
    overlaps: list[tuple[int, ...]] = []
    lock = threading.Lock()

    def run_batch(ids: list[int]) -> None:
        with lock:
            if running:
                overlaps.append((*running, *ids))
            running.extend(ids)
        time.sleep(0.05)
        with lock:
            for dump_id in ids:
                running.remove(dump_id)

    scheduler = PostDataScheduler(toc, run_batch, runners=3)
    scheduler.table_loaded(2)
    scheduler.finish()

    assert overlaps == []


def test_a_runner_s_failure_is_raised_by_finish_and_stops_the_rest() -> None:
    def run_batch(ids: list[int]) -> None:
        raise RuntimeError(f"batch {ids} failed")

    scheduler = PostDataScheduler(TOC, run_batch, runners=1)
    scheduler.table_loaded(3)
    scheduler.table_loaded(4)
    try:
        scheduler.finish()
    except RuntimeError as exc:
        assert "failed" in str(exc)
    else:
        raise AssertionError("finish() did not raise")
    assert scheduler.batches == 0


def test_a_real_archive_s_foreign_key_waits_for_both_tables_and_its_index_for_one(pg_database: str) -> None:
    run_sql(
        pg_database,
        """
        CREATE TABLE parent (id int PRIMARY KEY);
        CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, note text);
        CREATE INDEX child_note ON child (note);
        COMMENT ON INDEX child_note IS 'notes';
        """,
    )
    archive = subprocess.run(["pg_dump", "-Fc", "-Z0", dsn_for(pg_database)], capture_output=True, check=True).stdout
    toc = dump_toc.parse(archive)
    ids = {(e.desc, e.tag): e.dump_id for e in toc.entries}
    planned = {e.dump_id: e for e in plan(toc)}

    fk = planned[ids[("FK CONSTRAINT", "child child_parent_id_fkey")]]
    assert fk.waits_data == {ids[("TABLE DATA", "child")], ids[("TABLE DATA", "parent")]}
    assert fk.waits_entries == {ids[("CONSTRAINT", "parent parent_pkey")]}
    assert planned[ids[("INDEX", "child_note")]].waits_data == {ids[("TABLE DATA", "child")]}
    assert planned[ids[("COMMENT", "INDEX child_note")]].waits_entries == {ids[("INDEX", "child_note")]}
