"""The repository of backups in a storage: layout, typed records, and list/find/latest/commit.

The catalog is the only reader and writer of stored records (manifests, pins, verification
records, drill reports); features ask it and never parse keys or JSON themselves.
``from opskit import catalog`` gives the whole face:

- ``layout``: backup ids, times, and the key of every object;
- ``manifest`` / ``repository``: the manifest model; commit, list, find and latest backups;
- ``records``: :class:`Check`, the one comparison model of verify records and drill reports;
- ``verifications``, ``pins``, ``drills``: one module per other record;
- ``derived``: which derived targets of a server target a storage holds;
- ``locks``: repository locks that let runs on one repository coordinate;
- ``objects``: the JSON encoding every record shares.
"""

from opskit.catalog.commit import check_artifacts_stored
from opskit.catalog.derived import derived_targets, expand_targets
from opskit.catalog.drills import (
    DRILL_FAIL,
    DRILL_PASS,
    RTO_UNMEASURED,
    DrillRecord,
    latest_drill,
    list_drills,
    newest_drill,
    write_drill_report,
)
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
    drill_report_key,
    drills_prefix,
    format_time,
    is_backup_id,
    is_verify_name,
    manifest_key,
    new_backup_id,
    parse_time,
    pin_key,
    split_backup_key,
    verify_key,
)
from opskit.catalog.locks import (
    LOCKS_DIR,
    LockRecord,
    RepositoryLock,
    acquire_lock,
    list_locks,
    live_backup_ids,
    locked,
    locks_prefix,
    read_storage_time,
    remove_locks,
)
from opskit.catalog.manifest import Artifact, Manifest
from opskit.catalog.objects import read_json, write_json
from opskit.catalog.pins import Pin, is_pinned, pinned_ids, remove_pin, write_pin
from opskit.catalog.records import Check
from opskit.catalog.repository import (
    LIST_CONCURRENCY,
    BadManifest,
    find_backup,
    latest_backup,
    list_backups,
    list_manifest_keys,
    read_manifest,
    write_manifest,
)
from opskit.catalog.verifications import (
    FAIL,
    PASS,
    Verification,
    latest_verification,
    latest_verify_run,
    newest_verified_id,
    read_verification,
    record_verification,
)
from opskit.pg.facts import TableFacts

__all__ = [
    "DRILLS_DIR",
    "DRILL_FAIL",
    "DRILL_PASS",
    "DUMP_ARTIFACT",
    "FAIL",
    "FORMAT_VERSION",
    "GLOBALS_ARTIFACT",
    "LIST_CONCURRENCY",
    "LOCKS_DIR",
    "MANIFEST_NAME",
    "PASS",
    "PIN_NAME",
    "RTO_UNMEASURED",
    "VERIFY_PREFIX",
    "Artifact",
    "BadManifest",
    "Check",
    "DrillRecord",
    "LockRecord",
    "Manifest",
    "Pin",
    "RepositoryLock",
    "TableFacts",
    "Verification",
    "acquire_lock",
    "artifact_key",
    "backup_prefix",
    "check_artifacts_stored",
    "derived_targets",
    "drill_report_key",
    "drills_prefix",
    "expand_targets",
    "find_backup",
    "format_time",
    "is_backup_id",
    "is_pinned",
    "is_verify_name",
    "latest_backup",
    "latest_drill",
    "latest_verification",
    "latest_verify_run",
    "list_backups",
    "list_drills",
    "list_locks",
    "list_manifest_keys",
    "live_backup_ids",
    "locked",
    "locks_prefix",
    "manifest_key",
    "new_backup_id",
    "newest_drill",
    "newest_verified_id",
    "parse_time",
    "pin_key",
    "pinned_ids",
    "read_json",
    "read_manifest",
    "read_storage_time",
    "read_verification",
    "record_verification",
    "remove_locks",
    "remove_pin",
    "split_backup_key",
    "verify_key",
    "write_drill_report",
    "write_json",
    "write_manifest",
    "write_pin",
]
