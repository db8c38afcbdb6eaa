"""The optional ``[wal]`` table of the configuration: continuous WAL archiving.

::

    [wal]
    partial_interval = "60s"   # wal stream: ship the segment being written this often (bounds the RPO)
    partial_bytes = "4MiB"     # wal stream: ... and whenever it has grown by this much ("0" = on the interval only)
    max_spool = "1GiB"         # wal stream: local spool of segments not yet stored; past it, stop with an error
    spool_dir = "wal-spool"    # wal stream: where pg_receivewal writes (relative to tools.state_dir)
    slot = "opskit"            # wal stream: pg_receivewal's replication slot; "<slot>_shipped" keeps WAL until stored
    archive_wait_timeout = "10m"    # backup now --kind base: how long to wait for the server to archive its last WAL

``wal stream`` uses two physical slots: ``slot`` for pg_receivewal (it follows what reached the
local spool) and ``<slot>_shipped``, which the streamer advances only past segments stored in the
archive, so the server keeps what the spool would lose. A slot nobody reads keeps WAL on the
server without bound: set the server's ``max_slot_wal_keep_size`` (README, "Point-in-time
recovery"); ``opskit_wal_slot_lag_bytes`` and the ``OpskitWalSlotLagHigh`` alert show a slot
falling behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from opskit.config.schema import Section

DEFAULT_PARTIAL_INTERVAL = timedelta(seconds=60)
DEFAULT_MAX_SPOOL = 1024**3
# A quarter segment: the archive trails a busy server by at most this much plus one partial's store, for
# about 2.5x the compression work of the WAL itself (each partial is compressed whole), which a streamer
# that keeps up with the segments has to spare; finished segments always ship first.
DEFAULT_PARTIAL_BYTES = 4 * 1024**2
# pg_basebackup -X none ends only once the server has archived the backup's last segment; a failing
# archive_command makes that wait endless. Ten minutes is far beyond a healthy archive_command (seconds)
# and short enough for an hourly job to fail visibly before the next one is due.
DEFAULT_ARCHIVE_WAIT_TIMEOUT = timedelta(minutes=10)
SHIPPED_SUFFIX = "_shipped"
# A slot name is at most 63 bytes (NAMEDATALEN - 1) of [a-z0-9_]; the second slot appends the suffix.
_SLOT_RE = re.compile(rf"^[a-z0-9_]{{1,{63 - len(SHIPPED_SUFFIX)}}}$")


@dataclass(frozen=True)
class WalSettings:
    """Validated ``[wal]`` settings (these defaults when the table is absent)."""

    partial_interval: timedelta = DEFAULT_PARTIAL_INTERVAL
    partial_bytes: int = DEFAULT_PARTIAL_BYTES
    max_spool: int = DEFAULT_MAX_SPOOL
    spool_dir: str = "wal-spool"
    slot: str = "opskit"
    archive_wait_timeout: timedelta = DEFAULT_ARCHIVE_WAIT_TIMEOUT

    @property
    def shipped_slot(self) -> str:
        """Return the name of the slot that keeps WAL on the server until it is stored: ``<slot>_shipped``."""
        return shipped_slot(self.slot)


def shipped_slot(slot: str) -> str:
    """Return the name of the streamer's second slot for pg_receivewal's slot ``slot``."""
    return slot + SHIPPED_SUFFIX


def parse_settings(section: Section) -> WalSettings:
    """Return the WalSettings of ``section``; problems are recorded on the section's error list."""
    interval = section.duration("partial_interval", DEFAULT_PARTIAL_INTERVAL)
    if interval.total_seconds() < 1:
        section.errors.add(section.key_path("partial_interval"), "must be at least 1s")
    partial_bytes = section.size("partial_bytes", DEFAULT_PARTIAL_BYTES)
    if partial_bytes and partial_bytes < 64 * 1024:
        section.errors.add(section.key_path("partial_bytes"), 'must be "0" (off) or at least 64KiB')
    max_spool = section.size("max_spool", DEFAULT_MAX_SPOOL)
    if max_spool < 64 * 1024 * 1024:
        section.errors.add(section.key_path("max_spool"), "must be at least 64MiB (four WAL segments)")
    slot = section.str("slot", "opskit")
    if not _SLOT_RE.match(slot):
        section.errors.add(
            section.key_path("slot"),
            f"must be 1 to {63 - len(SHIPPED_SUFFIX)} characters of a-z, 0-9 and _ "
            f"(a replication slot name, with room for '{SHIPPED_SUFFIX}')",
        )
    wait = section.duration("archive_wait_timeout", DEFAULT_ARCHIVE_WAIT_TIMEOUT)
    if wait.total_seconds() < 1:
        section.errors.add(section.key_path("archive_wait_timeout"), "must be at least 1s")
    result = WalSettings(
        partial_interval=interval,
        partial_bytes=partial_bytes,
        max_spool=max_spool,
        spool_dir=section.str("spool_dir", "wal-spool"),
        slot=slot,
        archive_wait_timeout=wait,
    )
    section.finish()
    return result
