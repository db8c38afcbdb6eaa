"""The order of a ``pg_restore --clean`` run that PostgreSQL can drop: partitions' constraints after their parent's.

``pg_restore --clean`` drops in the reverse of the order it restores. pg_dump lists a primary key
or unique constraint of a partitioned table (``ALTER TABLE ONLY parent ADD CONSTRAINT``) before
the same constraint of each partition, then ``INDEX ATTACH`` entries joining them; the reverse
order drops the partitions' constraints first, and PostgreSQL refuses that ("cannot drop inherited
constraint ... of relation ..."), so a ``--clean`` restore of any database with declarative
partitioning and a primary key fails (rolled back: opskit runs it in one transaction). The DROP
statements are pg_dump's, stored in the archive with each entry, so a newer pg_restore reading an
older backup would not change them either.

The fix here changes only the order: every partition's constraint is moved ahead of its parent's
(deepest partition level first), among the constraint entries' own places in the TOC. Restored in
that order, each ``ALTER TABLE ONLY ... ADD CONSTRAINT`` still creates an unattached index (its
``INDEX ATTACH`` entry comes later, as before); dropped in the reverse, the parent's constraint
goes first and takes its partitions' constraints with it (PostgreSQL drops a partitioned table's
non-CHECK constraint through its dependencies), and the partitions' own ``DROP CONSTRAINT IF
EXISTS`` find nothing left to drop. pg_restore reads the order from a ``-L`` list; data entries
keep their order, so it still restores from a stream that cannot seek.
"""

from __future__ import annotations

from opskit.pg.toc import ArchiveToc, TocEntry

__all__ = ["drop_safe_order", "list_file_text"]

CONSTRAINT = "CONSTRAINT"  # a primary key, unique or exclusion constraint (FK and CHECK have their own descs)
INDEX_ATTACH = "INDEX ATTACH"  # ALTER INDEX parent ATTACH PARTITION child


def drop_safe_order(toc: ArchiveToc) -> list[TocEntry] | None:
    """Return every entry of ``toc`` in an order whose reverse PostgreSQL can drop; None when the archive's already is.

    Only constraints joined by an ``INDEX ATTACH`` entry move, among their own places: a
    partition's constraint comes before its parent's, the deepest partition level first.
    """
    parent_of = _attached_constraints(toc)
    if not parent_of:
        return None
    levels = {dump_id: _level(dump_id, parent_of) for dump_id in {*parent_of, *parent_of.values()}}
    places = [i for i, entry in enumerate(toc.entries) if entry.dump_id in levels]
    # sorted() is stable: within a level the archive's own order (pg_dump's by name) stays.
    moved = sorted((toc.entries[i] for i in places), key=lambda entry: -levels[entry.dump_id])
    order = list(toc.entries)
    for place, entry in zip(places, moved, strict=True):
        order[place] = entry
    return order


def list_file_text(entries: list[TocEntry]) -> str:
    """Return a ``pg_restore -L`` list naming ``entries`` in this order (pg_restore reads the id before each ``;``)."""
    return "".join(f"{entry.dump_id};\n" for entry in entries)


def _attached_constraints(toc: ArchiveToc) -> dict[int, int]:
    """Return {partition's constraint: its parent's constraint} as the ``INDEX ATTACH`` entries join them.

    An ``INDEX ATTACH`` entry depends on both constraints (and both tables); the partition's
    constraint is the one that depends on the other (its index is a partition of the parent's).
    """
    by_id = {entry.dump_id: entry for entry in toc.entries}
    parent_of: dict[int, int] = {}
    for attach in toc.entries:
        if attach.desc != INDEX_ATTACH:
            continue
        joined = [by_id[d] for d in dict.fromkeys(attach.dependencies) if d in by_id and by_id[d].desc == CONSTRAINT]
        for child in joined:
            parents = [p.dump_id for p in joined if p is not child and p.dump_id in child.dependencies]
            if len(parents) == 1:
                parent_of[child.dump_id] = parents[0]
    return parent_of


def _level(dump_id: int, parent_of: dict[int, int]) -> int:
    """Return how many parent constraints are above ``dump_id`` (0: the constraint of the top partitioned table)."""
    seen = {dump_id}
    while dump_id in parent_of and parent_of[dump_id] not in seen:  # a cycle cannot come from pg_dump: stop
        dump_id = parent_of[dump_id]
        seen.add(dump_id)
    return len(seen) - 1
