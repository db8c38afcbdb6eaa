"""The post-data section of a loader restore, started table by table while the data still loads.

``pg_restore --jobs`` starts a table's indexes as soon as that table's data is in, and its
foreign keys once both tables are; building every index only after all data leaves a core idle
behind the last long build (a GIN index on JSONB, typically). This module does the same for
``opskit.restore.parallel``'s loader route, with pg_restore's own rules
(``pg_backup_archiver.c``):

- an entry waits for the data of every table it depends on (``repoint_table_dependencies``:
  a dependency on a TABLE is one on its TABLE DATA), and for every post-data entry it depends
  on (a foreign key waits for the referenced table's unique constraint);
- an entry that depends on no table and no post-data entry waits for all data, as it would
  in pg_restore's serial order (nothing is known about what it touches);
- CONSTRAINT, CHECK CONSTRAINT, FK CONSTRAINT, RULE and TRIGGER entries take an exclusive lock
  on their tables (``identify_locking_dependencies``), so a batch holding one never runs beside
  a batch that touches those tables (``has_lock_conflicts``): two foreign keys between the same
  tables cannot deadlock.

Ready entries are run in batches, each by one ``pg_restore -L <list> --section=post-data`` in
archive order, on up to ``runners`` at once; a batch takes one entry while few are ready, a
share of them when many are (one pg_restore per index would cost a start-up each for thousands
of small tables), plus the entries that depend only on it (an index's comment). A runner's failure stops the others and is raised by ``finish``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opskit.pg.toc import ArchiveToc

# pg_restore's identify_locking_dependencies: these take an exclusive lock on their tables.
EXCLUSIVE_LOCK_ENTRIES = {"CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "RULE", "TRIGGER"}
# How many batches the ready entries are cut into per runner, at most.
BATCHES_PER_RUNNER = 4


@dataclass
class _Entry:
    dump_id: int
    tables: set[int] = field(default_factory=set)  # TABLE dump ids it depends on
    waits_data: set[int] = field(default_factory=set)  # TABLE DATA dump ids not yet loaded
    waits_entries: set[int] = field(default_factory=set)  # post-data dump ids not yet done
    waits_all_data: bool = False
    exclusive: bool = False


@dataclass
class _Batch:
    entries: list[_Entry]
    tables: set[int]
    locks: set[int]


def plan(toc: ArchiveToc) -> list[_Entry]:
    """Return the post-data entries of ``toc`` in archive order, each with what it waits for."""
    by_id = {e.dump_id: e for e in toc.entries}
    data_of_table: dict[int, int] = {}  # TABLE dump id -> its TABLE DATA dump id
    for entry in toc.entries:
        if entry.desc == "TABLE DATA":
            for dependency in entry.dependencies:
                if dependency in by_id and by_id[dependency].desc == "TABLE":
                    data_of_table[dependency] = entry.dump_id
    post_ids = {e.dump_id for e in toc.entries if e.section == "post-data"}
    planned = []
    for entry in toc.entries:
        if entry.dump_id not in post_ids:
            continue
        item = _Entry(entry.dump_id, exclusive=entry.desc in EXCLUSIVE_LOCK_ENTRIES)
        for dependency in entry.dependencies:
            target = by_id.get(dependency)
            if target is None:
                continue
            if dependency in post_ids:
                item.waits_entries.add(dependency)
            elif target.desc == "TABLE":
                item.tables.add(dependency)
                if dependency in data_of_table:
                    item.waits_data.add(data_of_table[dependency])
            elif target.desc == "TABLE DATA":
                item.waits_data.add(dependency)
                item.tables.update(d for d in target.dependencies if d in by_id and by_id[d].desc == "TABLE")
        item.waits_all_data = not item.waits_data and not item.waits_entries
        planned.append(item)
    return planned


class PostDataScheduler:
    """Runs the post-data entries of a loader restore as their tables' data arrives.

    ``run_batch(dump_ids)`` restores those entries (one pg_restore, archive order) and raises
    on failure. Call ``table_loaded`` for each TABLE DATA entry once its rows are committed,
    ``all_data_loaded`` after the data section, then ``finish``.
    """

    def __init__(self, toc: ArchiveToc, run_batch: Callable[[list[int]], None], runners: int) -> None:
        self._run_batch = run_batch
        self._entries = plan(toc)
        self._waiting: list[_Entry] = list(self._entries)  # archive order
        self._loaded: set[int] = set()
        self._all_data = False
        self._running: list[_Batch] = []
        self._done: set[int] = set()
        self._failure: BaseException | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._runners = max(1, runners)
        self.batches = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"opskit-post-data-{i}", daemon=True) for i in range(self._runners)
        ]
        for thread in self._threads:
            thread.start()

    def table_loaded(self, data_dump_id: int) -> None:
        """Say the rows of TABLE DATA entry ``data_dump_id`` are committed."""
        with self._cond:
            self._loaded.add(data_dump_id)
            self._cond.notify_all()

    def all_data_loaded(self) -> None:
        """Say the whole data section (and the sequences' values) is in."""
        with self._cond:
            self._all_data = True
            self._cond.notify_all()

    def finish(self) -> None:
        """Wait until every post-data entry has run. Raises the first runner's failure."""
        self.all_data_loaded()
        for thread in self._threads:
            thread.join()
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        """Start no more batches (after a failure); the caller stops the running pg_restores."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for each runner to return."""
        for thread in self._threads:
            thread.join(timeout=timeout)

    # -- the runners ------------------------------------------------------------------------------

    def _ready(self, entry: _Entry, batch_ids: set[int]) -> bool:
        if entry.waits_all_data and not self._all_data:
            return False
        if not entry.waits_data <= self._loaded:
            return False
        return all(d in self._done or d in batch_ids for d in entry.waits_entries)

    def _conflicts(self, tables: Iterable[int], locks: Iterable[int]) -> bool:
        tables, locks = set(tables), set(locks)
        return any(locks & batch.tables or batch.locks & tables for batch in self._running)

    def _take(self) -> _Batch | None:
        """Return the next batch to run (and mark it running), or None when nothing is ready now."""
        ready = [
            e
            for e in self._waiting
            if self._ready(e, set()) and not self._conflicts(e.tables, e.tables if e.exclusive else ())
        ]
        if not ready:
            if self._all_data and not self._running and self._waiting:
                # Nothing can start and nothing runs that could make it: a dependency this plan does
                # not see. Run what is left in archive order, as pg_restore's serial pass would.
                ready = list(self._waiting)
            else:
                return None
        # One entry per pg_restore while few are ready, so a long build (a GIN index) does not hold
        # back the entries queued behind it on the same run, nor keep its table locked for them; many
        # small tables' entries are batched, a few pg_restore start-ups per runner in all.
        share = ready[: max(1, math.ceil(len(ready) / (BATCHES_PER_RUNNER * self._runners)))]
        chosen = {e.dump_id for e in share}
        # Ride along: entries that wait only for this batch (and loaded data), run after it in archive order.
        for entry in self._waiting:
            rides = entry.dump_id not in chosen and entry.waits_entries & chosen and self._ready(entry, chosen)
            if rides and not self._conflicts(entry.tables, entry.tables if entry.exclusive else ()):
                chosen.add(entry.dump_id)
        entries = [e for e in self._waiting if e.dump_id in chosen]
        tables = set().union(*(e.tables for e in entries))
        locks = set().union(*(e.tables for e in entries if e.exclusive))
        # Within a batch the entries run one after another, so their own locks cannot conflict.
        batch = _Batch(entries, tables, locks)
        self._waiting = [e for e in self._waiting if e.dump_id not in chosen]
        self._running.append(batch)
        return batch

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping or self._failure is not None:
                        return
                    if not self._waiting:
                        self._cond.notify_all()
                        return
                    batch = self._take()
                    if batch is not None:
                        break
                    self._cond.wait(timeout=1.0)
            try:
                self._run_batch([e.dump_id for e in batch.entries])
            except BaseException as exc:
                with self._cond:
                    if self._failure is None:
                        self._failure = exc
                    self._running.remove(batch)
                    self._cond.notify_all()
                return
            with self._cond:
                self.batches += 1
                self._running.remove(batch)
                self._done.update(e.dump_id for e in batch.entries)
                self._cond.notify_all()
