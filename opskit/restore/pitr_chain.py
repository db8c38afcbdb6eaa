"""The archived WAL a recovery must replay, and the checks that it can and did: no gap, a target inside the window, the end reached.

Listed before the server starts (WAL archived later is not what recovery had to reach).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from opskit.catalog import Manifest, format_time
from opskit.context import AppContext
from opskit.core.errors import ConfigError, VerificationFailed
from opskit.restore.pitr_model import PitrResult, PitrWindow, RecoveryTarget
from opskit.wal import archive, layout
from opskit.wal import chain as wal_chain


@dataclass(frozen=True)
class ArchivedChain:
    """The WAL a recovery from one base backup must replay, as the archive held it before the server started.

    ``newest`` is the chain's newest archived segment (None: none), ``missing`` the first
    segments of the chain the archive lacks (:mod:`opskit.wal.chain`, oldest first);
    ``switches`` holds (timeline, first segment number after it) for each timeline the chain
    leaves, oldest first, so :meth:`name_of` names a segment on the timeline recovery reads.
    """

    backup_id: str
    newest: str | None
    missing: tuple[str, ...]
    segment_size: int
    newest_timeline: int
    switches: tuple[tuple[int, int], ...] = ()

    def number(self, name: str) -> int:
        """Return the segment number of segment ``name``."""
        return layout.segment_number(name, self.segment_size)[1]

    def name_of(self, number: int) -> str:
        """Return the name of segment ``number`` on the timeline the chain has there."""
        timeline = next((t for t, end in self.switches if number < end), self.newest_timeline)
        return layout.segment_name(timeline, number * self.segment_size, self.segment_size)

    def lacking_up_to(self, last: int | None = None) -> str | None:
        """Return the first segment the archive lacks, up to segment number ``last`` (None: the newest)."""
        return next((m for m in self.missing if last is None or self.number(m) <= last), None)

    def shortfall(self, replayed: int, required: int | None = None) -> tuple[str, bool] | None:
        """Return (the first segment recovery had to replay after segment ``replayed``, whether the archive lacks it).

        ``required`` is the segment number recovery had to reach (None: the chain's newest).
        None when it did reach it.
        """
        if self.newest is None:
            return None
        # Never past the newest: the archive holds nothing after it to have replayed.
        required = self.number(self.newest) if required is None else min(required, self.number(self.newest))
        if replayed >= required:
            return None
        lacking = next((m for m in self.missing if self.number(m) > replayed), None)
        if lacking is not None and self.number(lacking) <= required:
            return lacking, True
        return self.name_of(replayed + 1), False


def archived_chain(ctx: AppContext, target: str, storage: str, manifest: Manifest) -> ArchivedChain:
    """Return the WAL chain of base backup ``manifest`` in ``storage`` (:func:`opskit.wal.chain.check`).

    Raises StorageError when the archive cannot be listed or read.
    """
    report = wal_chain.check(ctx, target=target, storage=storage)
    found = next((c for c in report.chains if c.backup_id == manifest.id), None)
    size = int(manifest.base.get("segment_size") or layout.DEFAULT_SEGMENT_SIZE)
    first = str(manifest.base.get("wal_start") or "")
    first_timeline = layout.segment_number(first, size)[0] if layout.is_segment_name(first) else 1
    newest = found.newest if found is not None else None
    missing = found.missing if found is not None else ()
    newest_timeline = layout.segment_number(newest, size)[0] if newest else first_timeline
    switches: tuple[tuple[int, int], ...] = ()
    if newest_timeline > first_timeline:
        data = archive.read_wal(ctx, ctx.storage(storage), target, f"{newest_timeline:08X}.history")
        entries = wal_chain.parse_history(data.decode("utf-8", "replace")) if data is not None else []
        switches = tuple((parent, lsn // size) for parent, lsn in entries if parent >= first_timeline)
    return ArchivedChain(manifest.id, newest, tuple(missing), size, newest_timeline, switches)


def check_no_gap(chain: ArchivedChain, target: RecoveryTarget) -> None:
    """Raise VerificationFailed (5) before anything is extracted when a recovery to the archive's end would stop at a gap."""
    lacking = chain.lacking_up_to()
    if target != RecoveryTarget() or lacking is None:
        return
    start = chain.number(lacking) * chain.segment_size
    raise VerificationFailed(
        f"the WAL of base backup {chain.backup_id} has a gap: segment {lacking} is missing from the archive, so "
        f"recovery to {target.describe()} (newest segment {chain.newest}) would stop there",
        hint=f"to recover what precedes the gap pass --to-lsn {layout.format_lsn(start)}; take a new base backup "
        "now and check archive_command ('opskit wal verify' lists the gaps)",
    )


def check_newest_on_path(chain: ArchivedChain, window: PitrWindow | None, target: RecoveryTarget) -> None:
    """Raise VerificationFailed (5) before the extract when ``--latest`` cannot reach the archive's newest segment.

    The chain follows the timelines the archived history files connect to the base backup; a
    newer segment on a timeline no history file reaches (its ``.history`` was never archived:
    a promoted copy archiving with archive_mode reset) would be skipped, and recovery would
    end on the old timeline and promote into a timeline number the archive already holds.
    """
    if target != RecoveryTarget() or window is None or chain.newest is None:
        return
    newest = window.newest_segment
    if layout.segment_number(newest, chain.segment_size) <= layout.segment_number(chain.newest, chain.segment_size):
        return
    timeline = layout.segment_number(newest, chain.segment_size)[0]
    raise VerificationFailed(
        f"the archive's newest WAL segment {newest} is on timeline {timeline}, which no archived history file "
        f"connects to base backup {chain.backup_id} (its WAL ends at {chain.newest}): recovery to "
        f"{target.describe()} would stop at {chain.newest} and promote into a timeline the archive already holds",
        hint=f"archive {timeline:08X}.history from the server that created timeline {timeline} "
        f"('opskit wal push pg_wal/{timeline:08X}.history'), or pass --to-lsn to recover timeline "
        f"{layout.segment_number(chain.newest, chain.segment_size)[0]} up to a point",
    )


def check_reachable(
    target: RecoveryTarget, window: PitrWindow, segment_size: int, hint: str, unconfirmed: str | None = None
) -> None:
    """Raise ConfigError (2) when ``target`` lies outside ``window``: a time, or an LSN past the newest segment's end.

    Decided from the archive's listing (and, for a time after its end, the source server's
    answer: ``unconfirmed`` says why it did not confirm the archive complete up to then),
    before anything is fetched. A restore point cannot be checked so: its name is inside the WAL.
    """
    if target.time is not None and not window.contains(target.time):
        outside = f"--to-time {format_time(target.time)} is outside the PITR window ({window.describe()})"
        if target.time < window.start:
            raise ConfigError(f"{outside}: it is before the oldest base backup's consistent point", hint=hint)
        known = window.archived_at if window.waiting_for is not None else window.end
        why = f"; {unconfirmed}" if unconfirmed else ""
        raise ConfigError(
            f"{outside}: the archive is known to hold every transaction only up to {format_time(known)}, when its "
            f"newest WAL was stored{why}",
            hint=f"pick a moment up to {format_time(window.end)}, pass --latest for the end of the archive, or "
            "wait until the WAL written since is archived ('opskit wal stream' stores it every wal.partial_interval)"
            if window.waiting_for is None
            else "pass --latest for the end of the archive, or wait until WAL written after the base backup is "
            "archived ('opskit wal stream' stores it every wal.partial_interval)",
        )
    if target.lsn is not None:
        _timeline, number = layout.segment_number(window.newest_segment, segment_size)
        end = (number + 1) * segment_size
        if layout.parse_lsn(target.lsn) > end:
            raise ConfigError(
                f"--to-lsn {target.lsn} is past the end of the archived WAL ({layout.format_lsn(end)}, the end of "
                f"segment {window.newest_segment}; window {window.describe()})",
                hint=hint,
            )


def _required_segment(target: RecoveryTarget, segment_size: int) -> int | None:
    """Return the segment number a recovery to ``target`` past the archive's end must reach (None: the newest)."""
    if target.lsn is None:
        return None
    return max(layout.parse_lsn(target.lsn) - 1, 0) // segment_size


def check_reached(chain: ArchivedChain, result: PitrResult) -> None:
    """Raise VerificationFailed (5) when a recovery that ran to the end of its WAL stopped short of the archive.

    The end is the chain's newest segment (an LSN target: the segment holding it); a segment
    after the one replay stopped in that the archive lacks is a gap, one it holds was refused.
    """
    lsn = layout.parse_lsn(result.replay_lsn or "0/0")
    replayed = (lsn - 1) // chain.segment_size  # the LSN is where the next record would begin
    short = chain.shortfall(replayed, _required_segment(result.target, chain.segment_size))
    if short is None:
        return
    name, lacking = short
    why = "is missing from the archive (a gap)" if lacking else "is archived but was not replayed"
    start = layout.format_lsn(chain.number(name) * chain.segment_size)
    raise VerificationFailed(
        f"recovery to {result.target.describe()} ended at LSN {result.replay_lsn}, short of the archived WAL "
        f"(newest segment {chain.newest}): segment {name} {why}",
        hint=f"the data recovered stops before {start}; "
        + (
            f"to keep it pass --to-lsn {start}; take a new base backup now ('opskit wal verify' lists the gaps)"
            if lacking
            else f"run 'opskit wal fetch {name} <file>' to see why it cannot be fetched, fix that and restore again"
        ),
    )


def check_not_reached(chain: ArchivedChain, result: PitrResult) -> None:
    """After "recovery ended before configured recovery target was reached": raise unless the target lies at the archive's end.

    Raises VerificationFailed (5) when a gap before the target ended the WAL, ConfigError (2)
    for a restore point not in the WAL after the base backup.
    """
    target = result.target
    lacking = chain.lacking_up_to(_required_segment(target, chain.segment_size))
    if lacking is not None:
        raise VerificationFailed(
            f"recovery to {target.describe()} stopped at a gap: segment {lacking} is missing from the archive",
            hint=f"the WAL after it cannot be replayed from base backup {chain.backup_id}; pick a target before it, "
            "and take a new base backup now ('opskit wal verify' lists the gaps)",
        )
    if target.name is not None:
        raise ConfigError(
            f"restore point {target.name} was not reached from base backup {chain.backup_id}",
            hint=f"if it was created before {chain.backup_id}, pass an older backup: "
            f"opskit restore <older id> --pitr --to-name {shlex.quote(target.name)}",
        )
