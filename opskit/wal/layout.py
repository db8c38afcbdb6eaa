"""Where WAL lives in a storage, and the arithmetic of WAL file names and LSNs.

Layout, relative to the storage prefix (beside the target's backups)::

    <target>/wal/<timeline><log><seg>.zst[.age]    one WAL segment, zstd, optionally age
    <target>/wal/<timeline>.history.zst[.age]      a timeline history file
    <target>/wal/<segment>.<offset>.backup.zst     the backup history file a base backup leaves
    <target>/wal/<name>.sha256                     the plain bytes' sha256 and size, written first

The name part is PostgreSQL's own file name (``000000010000000000000003``), so a
``restore_command`` made of ``age``/``zstd`` lines finds ``%f`` without opskit. The
``.sha256`` record is what makes ``wal push`` idempotent without a key: pushing the same
bytes again succeeds, different bytes under the same name fail loudly.
"""

from __future__ import annotations

import re

from opskit.storage.base import join_key

WAL_DIR = "wal"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
_SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
_HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")
_PARTIAL_RE = re.compile(r"^[0-9A-F]{24}\.partial$")
# The backup history file the server archives when a base backup stops (``<segment>.<offset>.backup``).
_BACKUP_RE = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")
_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def is_segment_name(name: str) -> bool:
    """Return True for a WAL segment file name (24 upper-case hex digits)."""
    return bool(_SEGMENT_RE.match(name))


def is_history_name(name: str) -> bool:
    """Return True for a timeline history file name (``00000002.history``)."""
    return bool(_HISTORY_RE.match(name))


def is_archivable_name(name: str) -> bool:
    """Return True for a name ``wal push`` accepts: a segment, a history, backup history or ``.partial`` file."""
    return is_segment_name(name) or is_history_name(name) or bool(_PARTIAL_RE.match(name) or _BACKUP_RE.match(name))


def wal_prefix(target: str) -> str:
    """Return ``<target>/wal/``, the prefix every WAL object of ``target`` is under."""
    return join_key(target, WAL_DIR) + "/"


def object_key(target: str, name: str, encrypted: bool) -> str:
    """Return the key of the WAL file ``name``: ``<target>/wal/<name>.zst``, plus ``.age`` when encrypted."""
    return join_key(target, WAL_DIR, f"{name}.zst" + (".age" if encrypted else ""))


def hash_key(target: str, name: str) -> str:
    """Return the key of the record holding the plain sha256 of the WAL file ``name``."""
    return join_key(target, WAL_DIR, f"{name}.sha256")


def name_of_key(key: str) -> str | None:
    """Return the WAL file name an object key stores (``...wal/X.zst.age`` gives ``X``), or None."""
    last = key.rsplit("/", 1)[-1]
    for suffix in (".zst.age", ".zst"):
        if last.endswith(suffix):
            name = last[: -len(suffix)]
            return name if is_archivable_name(name) else None
    return None


def parse_lsn(text: str) -> int:
    """Return the LSN ``X/Y`` as an integer. Raises ValueError for anything else."""
    match = _LSN_RE.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not an LSN (expected the form 0/16B3748)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """Return an integer LSN in PostgreSQL's ``X/Y`` form."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """Return the name of the WAL segment that holds ``lsn`` on ``timeline`` (as ``pg_walfile_name``)."""
    segno = lsn // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def segment_number(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """Return (timeline, segment number) of a segment name. Raises ValueError for another name."""
    if not is_segment_name(name[:24]):
        raise ValueError(f"'{name}' is not a WAL segment name")
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:24], 16)


def next_segments(name: str, segment_size: int, count: int) -> list[str]:
    """Return the names of the ``count`` segments after segment ``name`` on its timeline.

    ``segment_size`` is the size of ``name``'s file (the cluster's wal_segment_size).
    """
    timeline, number = segment_number(name, segment_size)
    return [segment_name(timeline, (number + i) * segment_size, segment_size) for i in range(1, count + 1)]
