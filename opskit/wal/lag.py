"""How far the WAL archive trails the server, in bytes, read from the server in one query.

- **slot lag**: ``pg_current_wal_lsn()`` minus the oldest ``restart_lsn`` of the streamer's
  slots: the WAL the server keeps for the streamer. ``wal stream`` holds two physical slots,
  ``<slot>`` (pg_receivewal's, at what reached the local spool) and ``<slot>_shipped`` (at the
  end of the newest segment stored in the archive, :mod:`opskit.wal.stream`); the second one is
  behind whenever the storage is, so the lag follows the slot that actually holds the WAL. A
  streamer that is stopped or cannot ship leaves it behind and this grows until the server's
  disk fills, unless ``max_slot_wal_keep_size`` bounds it (the server then invalidates the slot
  instead; see README "Point-in-time recovery"). A physical slot has no ``confirmed_flush_lsn``:
  ``restart_lsn`` is what the server retains.
- **archive lag**: ``pg_current_wal_lsn()`` minus the end of the newest archived WAL: WAL
  written but not yet in the archive. With ``archive_command`` only whole segments are
  archived, so the lag runs from 0 to one segment (16 MiB) in normal operation. A running
  ``wal stream`` also counts the pages of the ``.partial`` it last shipped (it knows them; a
  reader of the storage alone, like ``opskit status`` without a streamer in its process, does
  not), so there the lag stays under ``wal.partial_bytes`` plus what is written while a
  partial ships. Either grows beyond that only when archiving is behind.

A standby has no current write position (``pg_current_wal_lsn()`` fails during recovery): both
lags are None there.

:func:`write_position` is the server's side of a different question: is the archive complete up
to now? (``restore --pitr --to-time`` on an idle database, :mod:`opskit.restore.pitr_complete`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from opskit.config.model import TargetConfig
from opskit.config.wal import shipped_slot
from opskit.core.errors import UnreachableError
from opskit.pg import connection
from opskit.wal import layout

_POSITIONS = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')
"""
# One row: whether pg_receivewal's slot exists and is held, and the lag of whichever of the two slots keeps more.
_SLOT = """
SELECT count(*) FILTER (WHERE slot_name = %(slot)s) > 0,
       bool_or(active) FILTER (WHERE slot_name = %(slot)s),
       max(CASE WHEN pg_is_in_recovery() THEN NULL
                ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint END)
FROM pg_replication_slots WHERE slot_name IN (%(slot)s, %(shipped)s)
"""


# The insert position, not the write position: a commit with synchronous_commit = off is visible once its
# record is inserted, before it is written. pg_walfile_name() names the insert timeline (it fails in recovery).
_INSERT_POSITION = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_block_size'),
       (SELECT system_identifier::text FROM pg_control_system())
"""


@dataclass(frozen=True)
class WritePosition:
    """Where the server inserts its next WAL record, and the server's clock read just before.

    ``insert_lsn`` and ``timeline`` are None on a standby (it inserts nothing of its own).
    """

    at: datetime
    insert_lsn: int | None
    timeline: int | None
    segment_size: int
    page_size: int
    system_identifier: str


@dataclass(frozen=True)
class WalLag:
    """The server's write position and how far the slot and the archive trail it (None: not known)."""

    current_lsn: int | None
    slot: str | None = None
    slot_exists: bool = False
    slot_active: bool | None = None
    slot_lag_bytes: int | None = None
    archive_lag_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (LSNs as PostgreSQL prints them)."""
        return {
            "current_lsn": layout.format_lsn(self.current_lsn) if self.current_lsn is not None else None,
            "slot": self.slot,
            "slot_exists": self.slot_exists,
            "slot_active": self.slot_active,
            "slot_lag_bytes": self.slot_lag_bytes,
            "archive_lag_bytes": self.archive_lag_bytes,
        }


def segment_end(name: str, segment_size: int) -> int:
    """Return the LSN just past the WAL segment ``name``. Raises ValueError for a name that is not a segment."""
    _timeline, number = layout.segment_number(name, segment_size)
    return (number + 1) * segment_size


def read_lag(
    conn: psycopg.Connection[Any], slot: str | None, newest_segment: str | None, *, archived_end: int | None = None
) -> WalLag:
    """Return the lag of ``slot`` (None: no slot to read) and of the archive whose newest segment is ``newest_segment``.

    The slot lag is that of ``slot`` or of its ``<slot>_shipped`` companion, whichever keeps more WAL.

    ``archived_end`` is the LSN just past the newest WAL archived when the caller knows it
    better than the newest whole segment (a streamer's shipped partial); the later of the two counts.

    Raises psycopg errors as they come (the callers' connections translate them).
    """
    row = conn.execute(_POSITIONS).fetchone()
    assert row is not None  # one row, always
    in_recovery, lsn_text, segment_size = row
    current = layout.parse_lsn(lsn_text) if lsn_text else None
    archive_lag = None
    ends = [archived_end] if archived_end is not None else []
    if newest_segment is not None:
        ends.append(segment_end(newest_segment, int(segment_size)))
    if current is not None and ends:
        # What is archived ends at or below the write position; max(0, ...) keeps a timeline switch (the new
        # timeline starts mid-segment) and a partial's page rounding from showing a negative lag.
        archive_lag = max(0, current - max(ends))
    if slot is None:
        return WalLag(current_lsn=current, archive_lag_bytes=archive_lag)
    slot_row = conn.execute(_SLOT, {"slot": slot, "shipped": shipped_slot(slot)}).fetchone()
    if slot_row is None or not slot_row[0]:
        return WalLag(current_lsn=current, slot=slot, archive_lag_bytes=archive_lag)
    _exists, active, slot_lag = slot_row
    return WalLag(
        current_lsn=current,
        slot=slot,
        slot_exists=True,
        slot_active=bool(active),
        slot_lag_bytes=None if in_recovery or slot_lag is None else int(slot_lag),
        archive_lag_bytes=archive_lag,
    )


def server_lag(
    target: TargetConfig, slot: str | None, newest_segment: str | None, *, archived_end: int | None = None
) -> WalLag:
    """Connect to ``target`` and return :func:`read_lag`'s answer.

    Raises UnreachableError (3) when the server cannot be reached or the query fails.
    """
    with connection.connect(target, autocommit=True, application_name="opskit wal lag") as conn:
        try:
            return read_lag(conn, slot, newest_segment, archived_end=archived_end)
        except psycopg.Error as exc:
            raise UnreachableError(
                f"cannot read the WAL position of target '{target.name}': {connection.libpq_reason(exc)}",
                hint="check that the server is up and is not a standby",
            ) from exc


def write_position(target: TargetConfig) -> WritePosition:
    """Connect to ``target`` and return its WAL insert position, with the server's clock read before it.

    The clock is read first, in a statement of its own: every transaction visible at that
    moment has its commit record inserted before the position is read, so WAL archived up to
    the position holds every transaction committed by then. Raises UnreachableError (3) when
    the server cannot be reached or the query fails.
    """
    with connection.connect(target, autocommit=True, application_name="opskit wal position") as conn:
        try:
            clock = conn.execute("SELECT clock_timestamp()").fetchone()
            row = conn.execute(_INSERT_POSITION).fetchone()
        except psycopg.Error as exc:
            raise UnreachableError(
                f"cannot read the WAL position of target '{target.name}': {connection.libpq_reason(exc)}",
                hint="check that the server is up",
            ) from exc
    assert clock is not None and row is not None  # one row, always
    _in_recovery, lsn_text, timeline, segment_size, page_size, system_identifier = row
    return WritePosition(
        at=clock[0],
        insert_lsn=layout.parse_lsn(lsn_text) if lsn_text else None,
        timeline=int(timeline, 16) if timeline else None,
        segment_size=int(segment_size),
        page_size=int(page_size),
        system_identifier=str(system_identifier),
    )
