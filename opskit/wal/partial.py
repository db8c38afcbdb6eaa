"""How much WAL a segment being written holds: the end of the pages pg_receivewal has filled.

pg_receivewal pads a new ``<segment>.partial`` with zeros to the full segment size before it
writes any WAL into it, so the file's size says nothing about its content. Every WAL page
starts with a header whose timeline (``xlp_tli``, bytes 4-8 of the page) is never 0, and the
pages are written in order: the written pages are a prefix of the file, found by a binary
search over page headers (a dozen small reads for a 16 MiB segment). The answer is rounded up
to whole pages, which is what the streamer needs to decide when a partial has grown enough to
ship again, and what the archive lag counts for a shipped partial.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

DEFAULT_PAGE_SIZE = 8192  # XLOG_BLCKSZ of every build that does not change it at compile time
_HEADER = 40  # the long page header that starts a segment, up to and including xlp_xlog_blcksz
_UINT32 = struct.Struct("<I")  # xlp_tli and xlp_xlog_blcksz, little-endian on every platform PostgreSQL ships for


def written_bytes(stream: BinaryIO, size: int) -> int:
    """Return how many bytes of the WAL file ``stream`` (``size`` bytes long) hold WAL, in whole pages.

    0 for a file pg_receivewal has only padded. ``stream`` must be seekable; its position is
    left wherever the last read ended.
    """
    page = _page_size(stream)
    pages = size // page
    low, high = 0, pages  # pages [0, low) are written, pages [high, pages) are not
    while low < high:
        middle = (low + high) // 2
        if _is_written(stream, middle * page):
            low = middle + 1
        else:
            high = middle
    return low * page


def _page_size(stream: BinaryIO) -> int:
    """Return the WAL page size the segment's long header records (the default when it is unwritten or odd)."""
    stream.seek(0)
    header = stream.read(_HEADER)
    if len(header) < _HEADER:
        return DEFAULT_PAGE_SIZE
    (recorded,) = _UINT32.unpack_from(header, 36)
    # A power of two between 1 KiB and 64 KiB is what configure accepts for --with-wal-blocksize.
    if 1024 <= recorded <= 65536 and recorded & (recorded - 1) == 0:
        return int(recorded)
    return DEFAULT_PAGE_SIZE


def _is_written(stream: BinaryIO, offset: int) -> bool:
    """Return True when the page at ``offset`` has a header (a timeline other than 0)."""
    stream.seek(offset + 4)
    raw = stream.read(_UINT32.size)
    return len(raw) == _UINT32.size and _UINT32.unpack(raw)[0] != 0
