"""The WAL chain check: from every base backup to the newest archived segment, no segment missing.

Recovery replays WAL segment by segment; one missing segment ends it there, silently earlier
than the operator asked. The check follows timeline switches the way recovery does
(``recovery_target_timeline = 'latest'``): the newest timeline's history file lists its
ancestors and the LSN where each one ended, so the chain is, per timeline on the path,
the segments from where it begins up to the one before its switch point, and on the newest
timeline up to the newest segment archived. The deciding part (:func:`find_gaps`) is pure;
:func:`check` lists the archive and asks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opskit.catalog import Manifest, format_time, list_backups
from opskit.context import AppContext
from opskit.core.errors import VerificationFailed
from opskit.storage.base import ObjectInfo, Storage
from opskit.wal import archive, layout

MAX_REPORTED = 20  # missing segments named per base backup; the count says how many more


@dataclass(frozen=True)
class ChainReport:
    """The WAL chain of one base backup: the segments it needs that the archive lacks (none: restorable)."""

    backup_id: str
    first: str
    newest: str | None
    missing: tuple[str, ...]
    missing_count: int

    @property
    def ok(self) -> bool:
        """Return True when every segment from the backup to the newest is archived."""
        return self.missing_count == 0 and self.newest is not None


@dataclass
class ArchiveReport:
    """Every base backup's chain, and the newest archived WAL (the end of the PITR window)."""

    target: str
    chains: list[ChainReport] = field(default_factory=list)
    newest_segment: str | None = None
    newest_archived_at: datetime | None = None
    segments: int = 0

    @property
    def ok(self) -> bool:
        """Return True when every base backup's chain is complete."""
        return all(chain.ok for chain in self.chains)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the report."""
        return {
            "target": self.target,
            "ok": self.ok,
            "segments": self.segments,
            "newest_segment": self.newest_segment,
            "newest_archived_at": format_time(self.newest_archived_at) if self.newest_archived_at else None,
            "chains": [
                {
                    "backup": c.backup_id,
                    "first": c.first,
                    "newest": c.newest,
                    "ok": c.ok,
                    "missing": list(c.missing),
                    "missing_count": c.missing_count,
                }
                for c in self.chains
            ],
        }


def parse_history(text: str) -> list[tuple[int, int]]:
    """Return the (parent timeline, switch LSN) lines of a timeline history file, oldest first."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.lstrip().startswith("#"):
            try:
                entries.append((int(parts[0]), layout.parse_lsn(parts[1])))
            except ValueError:
                continue
    return entries


def find_gaps(
    segments: Iterable[str],
    first: str,
    histories: dict[int, list[tuple[int, int]]],
    segment_size: int = layout.DEFAULT_SEGMENT_SIZE,
) -> tuple[str | None, list[str]]:
    """Return (newest segment of the chain, the segments missing from ``first`` to it).

    ``segments`` are the archived segment names, ``histories`` maps a timeline to its
    history file's entries. The chain ends on the newest timeline that descends from
    ``first``'s timeline (or that timeline itself).
    """
    have = {layout.segment_number(name, segment_size) for name in segments if layout.is_segment_name(name)}
    start_tli, start_seg = layout.segment_number(first, segment_size)
    # The newest timeline whose ancestry includes the backup's timeline.
    candidates = [tli for tli in histories if start_tli in {p for p, _ in histories[tli]}] + [start_tli]
    newest_tli = max(candidates)
    # (timeline, first segment, last segment or None for "the newest archived") along the path.
    path: list[tuple[int, int]] = [(p, lsn) for p, lsn in histories.get(newest_tli, []) if p >= start_tli]
    spans: list[tuple[int, int, int | None]] = []
    begin = start_seg
    for parent, switch_lsn in path:
        switch_seg = switch_lsn // segment_size
        spans.append((parent, begin, switch_seg - 1))
        begin = switch_seg
    on_newest = [seg for tli, seg in have if tli == newest_tli and seg >= begin]
    last = max(on_newest) if on_newest else None
    spans.append((newest_tli, begin, last))
    missing = []
    for tli, low, high in spans:
        if high is None:
            missing.append(_name(tli, low, segment_size))
            continue
        missing.extend(_name(tli, seg, segment_size) for seg in range(low, high + 1) if (tli, seg) not in have)
    newest = _name(newest_tli, last, segment_size) if last is not None else None
    return newest, missing


def _name(timeline: int, segno: int, segment_size: int) -> str:
    return layout.segment_name(timeline, segno * segment_size, segment_size)


def check(ctx: AppContext, target: str | None = None, storage: str | None = None) -> ArchiveReport:
    """Check the WAL chain of every base backup of ``target`` and return the report (raises nothing for gaps).

    Raises StorageError when the archive cannot be listed.
    """
    source = ctx.target(target)
    store = ctx.storage(storage or source.primary_storage)
    bases = [m for m in list_backups(store, source.name) if m.kind == "base"]
    return check_listed(ctx, store, source.name, bases, list(store.list(layout.wal_prefix(source.name))))


def check_listed(
    ctx: AppContext, store: Storage, target: str, bases: Sequence[Manifest], listing: Iterable[ObjectInfo]
) -> ArchiveReport:
    """Return the chain report of the base backups ``bases`` from ``listing``, the objects under ``target``'s WAL prefix.

    For a caller that reads the listing for more (``wal verify``'s content check), so the archive
    is listed once. Raises StorageError when a history file cannot be read.
    """
    report = ArchiveReport(target=target)
    names: list[str] = []
    for info in listing:
        name = layout.name_of_key(info.key)
        if name is None:
            continue
        names.append(name)
        if layout.is_segment_name(name):
            report.segments += 1
            if report.newest_archived_at is None or info.modified > report.newest_archived_at:
                report.newest_archived_at = info.modified
    histories = _histories(ctx, store, target, names)
    segment_names = [n for n in names if layout.is_segment_name(n)]
    if segment_names:
        report.newest_segment = max(segment_names, key=layout.segment_number)
    for manifest in bases:
        report.chains.append(_chain(manifest, segment_names, histories))
    return report


def _chain(manifest: Manifest, segments: Sequence[str], histories: dict[int, list[tuple[int, int]]]) -> ChainReport:
    first = str(manifest.base.get("wal_start", ""))
    size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
    newest, missing = find_gaps(segments, first, histories, size)
    return ChainReport(manifest.id, first, newest, tuple(missing[:MAX_REPORTED]), len(missing))


def _histories(ctx: AppContext, store: Storage, target: str, names: Sequence[str]) -> dict[int, list[tuple[int, int]]]:
    histories = {}
    for name in names:
        if layout.is_history_name(name):
            data = archive.read_wal(ctx, store, target, name)
            if data is not None:
                histories[int(name[:8], 16)] = parse_history(data.decode("utf-8", "replace"))
    return histories


def raise_for_gaps(report: ArchiveReport) -> None:
    """Raise VerificationFailed (5) naming the first gap when a base backup's chain is incomplete."""
    broken = [chain for chain in report.chains if not chain.ok]
    if not broken:
        return
    first = broken[0]
    where = f"segment {first.missing[0]} is missing" if first.missing else "no segment is archived"
    raise VerificationFailed(
        f"the WAL chain of {len(broken)} base backup(s) of target '{report.target}' has a gap: backup "
        f"{first.backup_id}: {where} ({first.missing_count} missing)",
        hint="recovery cannot pass a gap; take a new base backup now and check archive_command",
    )
