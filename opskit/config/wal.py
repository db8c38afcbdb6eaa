"""The optional ``[wal]`` table of the configuration: continuous WAL archiving.

::

    [wal]
    partial_interval = "60s"   # wal stream: ship the segment being written this often (bounds the RPO)
    partial_bytes = "4MiB"     # wal stream: ... and whenever it has grown by this much ("0" = on the interval only)
    max_spool = "1GiB"         # wal stream: local spool of segments not yet stored; past it, stop with an error
    spool_dir = "wal-spool"    # wal stream: where pg_receivewal writes (relative to tools.state_dir)
    slot = "opskit"            # wal stream: the replication slot that keeps the server from recycling WAL

A slot nobody reads keeps WAL on the server without bound: set the server's
``max_slot_wal_keep_size`` (README, "Point-in-time recovery"); ``opskit_wal_slot_lag_bytes``
and the ``OpskitWalSlotLagHigh`` alert show a slot falling behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from opskit.config.schema import Section

DEFAULT_PARTIAL_INTERVAL = timedelta(seconds=60)
DEFAULT_MAX_SPOOL = 1024**3
# A quarter segment: the archive trails a busy server by at most this much plus one partial's store, for
# about 2.5x the compression work of the WAL itself (each partial is compressed whole), which a streamer
# that keeps up with the segments has to spare; finished segments always ship first.
DEFAULT_PARTIAL_BYTES = 4 * 1024**2


@dataclass(frozen=True)
class WalSettings:
    """Validated ``[wal]`` settings (these defaults when the table is absent)."""

    partial_interval: timedelta = DEFAULT_PARTIAL_INTERVAL
    partial_bytes: int = DEFAULT_PARTIAL_BYTES
    max_spool: int = DEFAULT_MAX_SPOOL
    spool_dir: str = "wal-spool"
    slot: str = "opskit"


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
    result = WalSettings(
        partial_interval=interval,
        partial_bytes=partial_bytes,
        max_spool=max_spool,
        spool_dir=section.str("spool_dir", "wal-spool"),
        slot=section.str("slot", "opskit"),
    )
    section.finish()
    return result
