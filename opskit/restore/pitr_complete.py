"""How far the WAL archive is known to hold every transaction: the newest WAL's store time, or the server's word.

The listing alone proves the archive complete only up to the moment its newest WAL (a segment,
or ``wal stream``'s ``<segment>.partial`` of the one being written) reached the storage: the
streamer had then stored what pg_receivewal had received, and pg_receivewal receives what the
server flushes as it flushes it. On an idle database nothing is stored after that (the streamer
stores an unchanged partial only once), so a moment a few seconds ago lies after it although
nothing was written since. The source server can prove more: when its insert position lies
within the WAL the archive holds, every transaction visible when it was asked is archived, so
the archive is complete up to that moment (:func:`confirm`). It is asked only for a moment after
the listing's end, and a server that cannot be reached, is another cluster, a standby or on
another timeline proves nothing.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opskit.catalog import Manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import OpskitError
from opskit.wal import archive, lag, layout, partial

# The WAL format (src/include/access/xlog_internal.h, xlogrecord.h): records start MAXALIGNed (8 bytes
# on every platform PostgreSQL ships for); a page starts with a header whose xlp_rem_len is the length of
# a record continued from the page before; a record starts with xl_tot_len and carries xl_crc (CRC-32C).
_RECORD_ALIGN = 8
_SHORT_PAGE_HEADER = 24  # SizeOfXLogShortPHD
_LONG_PAGE_HEADER = 40  # SizeOfXLogLongPHD, the first page of a segment
_XLP_LONG_HEADER = 0x0002
_RECORD_HEADER = 24  # SizeOfXLogRecord
_CRC_OFFSET = 20  # offsetof(XLogRecord, xl_crc)
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


@dataclass(frozen=True)
class Confirmation:
    """The moment the source server confirmed the archive complete up to (None: it did not), and why not."""

    at: datetime | None
    reason: str = ""


def confirm(ctx: AppContext, source: TargetConfig, store: Any, manifest: Manifest, newest_segment: str) -> Confirmation:
    """Return when ``source``'s server confirmed that the archive in ``store`` holds every WAL record it inserted.

    ``manifest`` is the base backup recovery starts from (its cluster is the one to ask),
    ``newest_segment`` the archive's newest complete segment. Never raises: an unreachable
    server, another cluster, a standby, another timeline or unreadable WAL is a Confirmation
    without a moment, whose reason says why (the restore then keeps the listing's end).
    """
    try:
        position = lag.write_position(source)
    except OpskitError as exc:
        return Confirmation(None, f"the server could not be asked whether it wrote WAL since ({exc.one_line()})")
    expected = str(manifest.base.get("system_identifier") or manifest.server.get("system_identifier") or "")
    if expected and position.system_identifier != expected:
        return Confirmation(None, f"target '{source.name}' is now another cluster than base backup {manifest.id}'s")
    if position.insert_lsn is None or position.timeline is None:
        return Confirmation(None, f"the server of target '{source.name}' is a standby: it cannot say what it wrote")
    size = position.segment_size
    timeline = layout.segment_number(newest_segment, size)[0]
    if position.timeline != timeline:
        return Confirmation(
            None, f"the server writes timeline {position.timeline}, the archive's newest WAL is on timeline {timeline}"
        )
    try:
        end = archived_end(ctx, store, source.name, newest_segment, size, position.page_size)
    except OpskitError as exc:
        return Confirmation(None, f"the newest archived WAL cannot be read ({exc.one_line()})")
    inserted = record_position(position.insert_lsn, position.page_size, size)
    if inserted > end:
        return Confirmation(
            None,
            f"the server has written WAL up to {layout.format_lsn(inserted)} and the archive holds it only up to "
            f"{layout.format_lsn(end)}",
        )
    return Confirmation(position.at)


def archived_end(
    ctx: AppContext, store: Any, target: str, newest_segment: str, segment_size: int, page_size: int
) -> int:
    """Return the LSN just past the newest whole WAL record the archive holds after its newest complete segment.

    The end of ``newest_segment``, or inside the next one when ``wal stream`` stored its
    ``.partial`` (:func:`whole_records_end`); ``page_size`` is the server's wal_block_size. Raises VerificationFailed or RestoreFailed when
    the partial cannot be read or decrypted.
    """
    following = layout.next_segments(newest_segment, segment_size, 1)[0]
    data = archive.read_wal(ctx, store, target, following + ".partial")
    start = layout.segment_number(following, segment_size)[1] * segment_size
    return start if data is None else start + whole_records_end(data, page_size)


def whole_records_end(data: bytes, page_size: int) -> int:
    """Return the offset in the WAL file ``data`` (pages of ``page_size``) just past its last whole record (0: none).

    pg_receivewal pads a partial with zeros and fills its pages in order, so the last page with
    a header holds the end: its records are followed from the one the page header says a
    continued record ends at, while each fits in what was written and its CRC-32C holds. The
    answer is where the next record would start (the server's insert position when it wrote
    nothing more). A record that runs past the written pages ends the walk at its start:
    never past what the file holds.
    """
    written = partial.written_bytes(io.BytesIO(data), len(data))
    if not written:
        return 0
    page = written - page_size
    (info,) = _UINT16.unpack_from(data, page + 2)
    (continued,) = _UINT32.unpack_from(data, page + 16)
    header = _LONG_PAGE_HEADER if info & _XLP_LONG_HEADER else _SHORT_PAGE_HEADER
    position = _aligned(page + header + continued)
    if position > written:
        return page  # a record continues into a page not written yet: the whole ones end before this page
    while position + _RECORD_HEADER <= written:
        (length,) = _UINT32.unpack_from(data, position)
        if length < _RECORD_HEADER or position + length > written or not _crc_holds(data, position, length):
            break  # padding (0), or a record not (wholly) received: the WAL ends where it starts
        position = _aligned(position + length)
    return min(position, written)


def _aligned(offset: int) -> int:
    return -(-offset // _RECORD_ALIGN) * _RECORD_ALIGN


def _crc_holds(data: bytes, position: int, length: int) -> bool:
    """Return True when the record at ``position`` has the CRC-32C it records (over its data, then its header)."""
    crc = 0xFFFFFFFF
    for chunk in (
        memoryview(data)[position + _RECORD_HEADER : position + length],
        memoryview(data)[position : position + _CRC_OFFSET],
    ):
        for byte in chunk:
            crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF == _UINT32.unpack_from(data, position + _CRC_OFFSET)[0]


def record_position(lsn: int, page_size: int, segment_size: int) -> int:
    """Return ``lsn`` without the page header the server counts at a page's start (nothing is written there yet).

    pg_current_wal_insert_lsn() at a page boundary points past the header of a page not
    written yet (after pg_switch_wal(): past the next segment's long header).
    """
    if lsn % segment_size == _LONG_PAGE_HEADER:
        return lsn - _LONG_PAGE_HEADER
    if lsn % page_size == _SHORT_PAGE_HEADER and lsn % segment_size >= page_size:
        return lsn - _SHORT_PAGE_HEADER
    return lsn
