"""The repository of backups in a storage: layout, typed records, and list/find/commit.

The catalog is the only reader and writer of stored records; features ask it and never
parse keys or JSON themselves. ``from opskit import catalog`` gives the whole face.
"""

from opskit.catalog.layout import (
    DRILLS_DIR,
    DUMP_ARTIFACT,
    FORMAT_VERSION,
    GLOBALS_ARTIFACT,
    MANIFEST_NAME,
    PIN_NAME,
    VERIFY_PREFIX,
    artifact_key,
    backup_prefix,
    drills_prefix,
    format_time,
    is_backup_id,
    manifest_key,
    new_backup_id,
    parse_time,
    pin_key,
)
from opskit.catalog.manifest import Artifact, Manifest
from opskit.catalog.repository import (
    LIST_CONCURRENCY,
    BadManifest,
    find_backup,
    is_pinned,
    list_backups,
    list_manifest_keys,
    read_json,
    read_manifest,
    write_json,
    write_manifest,
)
from opskit.pg.facts import TableFacts

__all__ = [
    "DRILLS_DIR",
    "DUMP_ARTIFACT",
    "FORMAT_VERSION",
    "GLOBALS_ARTIFACT",
    "LIST_CONCURRENCY",
    "MANIFEST_NAME",
    "PIN_NAME",
    "VERIFY_PREFIX",
    "Artifact",
    "BadManifest",
    "Manifest",
    "TableFacts",
    "artifact_key",
    "backup_prefix",
    "drills_prefix",
    "find_backup",
    "format_time",
    "is_backup_id",
    "is_pinned",
    "list_backups",
    "list_manifest_keys",
    "manifest_key",
    "new_backup_id",
    "parse_time",
    "pin_key",
    "read_json",
    "read_manifest",
    "write_json",
    "write_manifest",
]
