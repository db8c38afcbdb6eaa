"""Building a table's indexes as soon as its rows are in, beside the load of the tables after it.

``pg_restore -j N`` fills N cores because it schedules each table's index and constraint builds
as soon as that table's data is restored, beside the next tables' data. The loader route of
``opskit restore --jobs N`` reads the archive as one stream, so the tables arrive in the
archive's order; this module gives it the same schedule:

- :func:`early_entries` picks, per table, the post-data entries that need nothing but that
  table and the schema: its indexes and its primary-key, unique and exclusion constraints.
  Foreign keys, triggers, rules, comments and whatever else is left for after the data, where
  ``pg_restore --jobs`` orders them by their dependencies as usual; what depends on an early
  build (a foreign key on a primary key) runs as soon as the builds it needs are done.
- :class:`PostDataBuilder` runs those builds on at most N-1 connections while the data loads,
  and on N once it is in, sharing N slots with the loader (:class:`opskit.pg.copy_loader.CopyLoader`
  holds one per block it writes), so loads and builds together keep N backends busy, no more.
  A build waiting for a slot gets it before the loader's next block (:class:`opskit.core.slots.Slots`),
  and a table's builds start longest first (``build_order``). Two builds on one table follow
  pg_restore's lock rule: a constraint (``ALTER TABLE ... ADD CONSTRAINT``, an ACCESS EXCLUSIVE
  lock) never runs beside another build on its table.

Only tables holding a good share of the dump get early builds (``EARLY_SHARE``): each build is
one ``pg_restore`` run, and a schema of thousands of small tables is better served by the one
``pg_restore --jobs`` at the end, which keeps its connections.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from opskit.core.log import get_logger
from opskit.core.slots import Slots
from opskit.pg.toc import ArchiveToc, TocEntry

log = get_logger(__name__)

EARLY_DESCS = {"INDEX", "CONSTRAINT"}
EXCLUSIVE_DESCS = {"CONSTRAINT"}  # ALTER TABLE ... ADD CONSTRAINT locks its table ACCESS EXCLUSIVE
# A table gets early builds when it holds at least 1/EARLY_SHARE of the dump's plain bytes, so at
# most EARLY_SHARE tables' builds are run one pg_restore each, and at least EARLY_MIN_BYTES: a
# smaller table's indexes take about as long to build as a pg_restore run takes to start.
EARLY_SHARE = 16
EARLY_MIN_BYTES = 4 * 1024 * 1024
# Index methods whose builds take longest for their table's size: a GIN, GiST or SP-GiST index
# is built by one process (GIN in parallel only from PostgreSQL 18) and often outlasts every
# btree. Started first among a table's builds, such a build overlaps the rest of the load
# instead of running alone at the end (longest job first, as a scheduler would).
SLOW_METHODS = {"gin", "gist", "spgist"}


def build_order(entry: TocEntry) -> int:
    """Return the rank of a table's early build: constraints first (they lock the table), slow methods next."""
    if entry.desc in EXCLUSIVE_DESCS:
        return 0
    return 1 if entry.index_method in SLOW_METHODS else 2


def early_threshold(plain_size: int) -> int:
    """Return the fewest bytes of rows a table must have loaded to get its builds early."""
    return max(plain_size // EARLY_SHARE, EARLY_MIN_BYTES)


RunEntries = Callable[[list[TocEntry], int], None]
"""Restores the given post-data entries with ``pg_restore -L`` and that many jobs; raises on failure."""


def early_entries(toc: ArchiveToc) -> dict[bytes, list[TocEntry]]:
    """Return, per COPY statement, the post-data entries that can be built once that table's rows are in.

    An entry qualifies when it is an index or a (non-foreign-key) constraint, depends on exactly
    one table whose data the archive holds under a COPY statement of its own, and otherwise
    only on pre-data entries (the schema, created before any data). Entries keep the TOC's order.
    """
    by_id = {entry.dump_id: entry for entry in toc.entries}
    data = [e for e in toc.data_entries() if e.desc == "TABLE DATA" and e.copy_stmt]
    # A statement shared by several entries (--load-via-partition-root) does not say which table it filled.
    uses = Counter(e.copy_stmt.strip() for e in data if e.copy_stmt)
    statement_of_table: dict[int, bytes] = {}
    for entry in data:
        assert entry.copy_stmt is not None
        statement = entry.copy_stmt.strip()
        if uses[statement] != 1:
            continue
        for dependency in entry.dependencies:
            if getattr(by_id.get(dependency), "desc", None) == "TABLE":
                statement_of_table[dependency] = statement
    early: dict[bytes, list[TocEntry]] = {}
    for entry in toc.entries:
        if entry.section != "post-data" or entry.desc not in EARLY_DESCS:
            continue
        tables = {d for d in entry.dependencies if d in statement_of_table}
        others = [by_id.get(d) for d in entry.dependencies if d not in statement_of_table]
        if len(tables) == 1 and all(other is not None and other.section == "pre-data" for other in others):
            early.setdefault(statement_of_table[tables.pop()], []).append(entry)
    return early


def needed(entries: Iterable[TocEntry], ids: set[int], toc: ArchiveToc) -> dict[int, frozenset[int]]:
    """Return, per dump id of ``entries``, which of ``ids`` it depends on, directly or through other entries."""
    by_id = {entry.dump_id: entry for entry in toc.entries}
    known: dict[int, frozenset[int]] = {}

    def reaches(dump_id: int, seen: frozenset[int]) -> frozenset[int]:
        if dump_id in ids:
            return frozenset({dump_id})
        if dump_id in known:
            return known[dump_id]
        entry = by_id.get(dump_id)
        found: frozenset[int] = frozenset()
        if entry is not None:
            for dependency in entry.dependencies:
                if dependency not in seen:
                    found |= reaches(dependency, seen | {dump_id})
        known[dump_id] = found
        return found

    result: dict[int, frozenset[int]] = {}
    for entry in entries:
        reached: frozenset[int] = frozenset()
        for dependency in entry.dependencies:
            reached |= reaches(dependency, frozenset({entry.dump_id}))
        result[entry.dump_id] = reached
    return result


@dataclass
class _Build:
    entry: TocEntry
    table: bytes
    state: str = "ready"  # ready, running, done


@dataclass
class _Table:
    running: int = 0
    exclusive_running: bool = False
    builds: list[_Build] = field(default_factory=list)


class PostDataBuilder:
    """Runs the early builds of each loaded table beside the load, then the rest of post-data.

    ``run(entries, jobs)`` restores entries (one pg_restore run); ``threshold`` is the fewest
    plain bytes a table must have loaded to get early builds. Call :meth:`table_loaded` from the
    loader, then :meth:`finish` once the data is in. ``slots`` is to be shared with the loader.
    """

    def __init__(self, toc: ArchiveToc, run: RunEntries, jobs: int, threshold: int, *, enabled: bool = True) -> None:
        self.toc, self._run, self.jobs, self._threshold = toc, run, jobs, threshold
        self.slots = Slots(jobs)
        self._early = early_entries(toc) if enabled and jobs > 1 else {}
        self._limit = jobs - 1  # while the data loads, one slot stays the loader's
        self._cond = threading.Condition()
        self._tables: dict[bytes, _Table] = {}
        self._queue: list[_Build] = []
        self._failure: BaseException | None = None
        self._running = 0
        self._done: set[int] = set()  # dump ids of the early builds that have finished
        self._threads: list[threading.Thread] = []
        self.started_during_load = 0
        self._loading = True

    @property
    def failure(self) -> BaseException | None:
        """The first build's failure, once one failed (the restore stops then)."""
        return self._failure

    def table_loaded(self, statement: bytes, size: int) -> None:
        """Queue the early builds of ``statement``'s table, now that its ``size`` bytes of rows are committed."""
        entries = self._early.get(statement)
        if not entries or size < self._threshold:
            return
        with self._cond:
            table = self._tables.setdefault(statement, _Table())
            for entry in sorted(entries, key=build_order):
                build = _Build(entry, statement)
                table.builds.append(build)
                self._queue.append(build)
            while len(self._threads) < self.jobs:
                thread = threading.Thread(target=self._work, name=f"opskit-build-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify_all()

    def finish(self) -> None:
        """Once the data is in: run every build left, then the rest of post-data. Raises what a build raised.

        The rest that depends on no early build runs as soon as every early build has started, on the
        slots they leave; what does depend on one (a foreign key on a primary key, a comment on an
        index) runs as soon as the builds it needs are done, on the slots free then, so a long build
        of another table (a GIN index) does not hold it back.
        """
        with self._cond:
            self._loading = False
            self._limit = self.jobs
            self._cond.notify_all()
        started = {b.entry.dump_id for t in self._tables.values() for b in t.builds}
        rest = [e for e in self.toc.entries if e.section == "post-data" and e.dump_id not in started]
        needs = needed(rest, started, self.toc)
        independent = [e for e in rest if not needs[e.dump_id]]
        if independent:
            with self._cond:
                self._cond.wait_for(lambda: not self._queue or self._failure is not None)
                self._raise_failure()
                jobs = max(1, self.jobs - self._running)
            with self._holding(jobs):
                self._run(independent, jobs)
        # One run at a time, each of what has become ready: an entry that depends on another of
        # these needs every build that one needs, so it is in the same run (pg_restore orders it
        # there) or a later one.
        waiting = [e for e in rest if needs[e.dump_id]]
        while waiting:
            with self._cond:
                self._cond.wait_for(functools.partial(self._ready_or_failed, waiting, needs))
                self._raise_failure()
                ready = self._ready(waiting, needs)
                jobs = max(1, self.jobs - self._running)
            taken = {e.dump_id for e in ready}
            waiting = [e for e in waiting if e.dump_id not in taken]
            with self._holding(jobs):
                self._run(ready, jobs)
        with self._cond:
            self._cond.wait_for(lambda: (not self._queue and self._running == 0) or self._failure is not None)
            self._raise_failure()
        log.info("post-data built", during_load=self.started_during_load, entries=len(started) + len(rest))

    def _ready(self, entries: list[TocEntry], needs: dict[int, frozenset[int]]) -> list[TocEntry]:
        """Return the entries whose needed builds are all done (call holding the condition)."""
        return [e for e in entries if needs[e.dump_id] <= self._done]

    def _ready_or_failed(self, entries: list[TocEntry], needs: dict[int, frozenset[int]]) -> bool:
        return self._failure is not None or bool(self._ready(entries, needs))

    def stop(self) -> None:
        """Start no more builds (after a failure elsewhere) and wait briefly for the running ones."""
        with self._cond:
            if self._failure is None:
                self._failure = RuntimeError("the restore was stopped")
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _holding(self, count: int) -> AbstractContextManager[None]:
        """Hold ``count`` of the slots shared with the loader while the block runs, ahead of its next block.

        A build is the longer path: the index that waits for the data to run dry (a GIN on
        PostgreSQL before 18 is built by one process) is the restore's tail.
        """
        return self.slots.hold(count, urgent=True)

    def _startable(self) -> _Build | None:
        if self._running >= self._limit:
            return None
        for build in self._queue:
            table = self._tables[build.table]
            exclusive = build.entry.desc in EXCLUSIVE_DESCS
            if table.exclusive_running or (exclusive and table.running):
                continue
            return build
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._failure is not None
                        or (not self._loading and not self._queue)
                        or self._startable() is not None
                    )
                )
                if self._failure is not None or (not self._loading and not self._queue):
                    return
                build = self._startable()
                assert build is not None
                self._queue.remove(build)
                table = self._tables[build.table]
                table.running += 1
                table.exclusive_running = build.entry.desc in EXCLUSIVE_DESCS
                build.state = "running"
                self._running += 1
                if self._loading:
                    self.started_during_load += 1
            try:
                with self._holding(1):
                    self._run([build.entry], 1)
            except BaseException as exc:
                with self._cond:
                    if self._failure is None:
                        self._failure = exc
            with self._cond:
                table.running -= 1
                table.exclusive_running = False
                build.state = "done"
                self._done.add(build.entry.dump_id)
                self._running -= 1
                self._cond.notify_all()
