"""Verification records: ``<target>/<id>/verify-<UTC time>.json``, one per verify run or drill verdict.

A record says when a backup was checked, how (``level``: ``stored``, ``full``, or ``restore``
for a drill), every check with expected and actual, and the verdict. Retention keeps the
newest backup whose latest record passed (docs/operations.md §1); ``status`` shows the newest
record of kind ``verify``. Records are written pass or fail and never rewritten.

A record lives in the storage whose bytes were checked (verify and drills read the primary
unless told otherwise), and ``opskit copy`` carries no record. On a secondary storage, a
copy never checked there takes the verdict of the primary's records of the same backup,
when the primary's manifest names the same artifacts (name, size, stored sha256): the copy
was checked against those hashes before it was committed, so a check of the primary's bytes
is a check of the copy's too. Without that, "newest verified" would be a different backup on
each storage and prune and copy would undo each other (docs/operations.md §1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from opskit import __version__
from opskit.catalog.layout import format_time, is_verify_name, parse_time, split_backup_key, verify_key
from opskit.catalog.manifest import Manifest
from opskit.catalog.objects import read_json, write_json
from opskit.catalog.records import Check, CheckValue
from opskit.catalog.repository import list_backups, read_manifest
from opskit.core.errors import ManifestError, ObjectNotFound, VerificationFailed
from opskit.core.log import get_logger
from opskit.storage.base import Storage

log = get_logger(__name__)

RECORD_FORMAT = 1
PASS = "pass"
FAIL = "fail"
VERIFY_KIND = "verify"
DRILL_KIND = "drill"
_MAX_RECORDS_READ = 20  # records read while looking for the newest of kind "verify"


@dataclass(frozen=True)
class Verification:
    """One recorded verification (or drill verdict) of a backup."""

    target: str
    backup_id: str
    storage: str
    time: datetime
    kind: str  # VERIFY_KIND or DRILL_KIND
    level: str  # "stored", "full" or (a drill) "restore"
    verdict: str  # PASS or FAIL
    checks: tuple[Check, ...] = ()
    key: str = ""

    @property
    def passed(self) -> bool:
        """Return True when the verdict is pass."""
        return self.verdict == PASS

    @property
    def first_failure(self) -> Check | None:
        """Return the first failed check, if any."""
        return next((c for c in self.checks if not c.ok), None)

    def to_dict(self) -> dict[str, CheckValue]:
        """Return the JSON-ready record as stored in ``verify-<time>.json``."""
        return {
            "format_version": RECORD_FORMAT,
            "kind": self.kind,
            "target": self.target,
            "backup_id": self.backup_id,
            "storage": self.storage,
            "time": format_time(self.time),
            "opskit_version": __version__,
            "level": self.level,
            "verdict": self.verdict,
            "checks": [c.to_verify_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: object, key: str = "") -> Verification:
        """Build from a stored record. Raises ManifestError (exit 5) when it is malformed."""
        try:
            if not isinstance(data, Mapping):
                raise TypeError(f"a record is a JSON object, not {type(data).__name__}")
            return cls(
                target=str(data["target"]),
                backup_id=str(data["backup_id"]),
                storage=str(data.get("storage", "")),
                time=parse_time(str(data["time"])),
                kind=str(data.get("kind", VERIFY_KIND)),
                level=str(data.get("level", "")),
                verdict=str(data["verdict"]),
                checks=tuple(Check.from_dict(c) for c in data.get("checks", [])),
                key=key,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"verification record '{key}' is malformed: {exc}") from exc


def record_verification(storage: Storage, verification: Verification) -> str:
    """Store ``verification`` next to its backup's manifest and return the key. Raises StorageError."""
    key = verify_key(verification.target, verification.backup_id, verification.time)
    write_json(storage, key, verification.to_dict())
    return key


def read_verification(storage: Storage, key: str) -> Verification:
    """Return the record stored under ``key``. Raises ObjectNotFound, ManifestError when malformed."""
    return Verification.from_dict(read_json(storage, key), key)


def _record_keys(storage: Storage, target: str) -> dict[str, list[str]]:
    """Return {backup id: [verification record keys]} for every backup directory of ``target``."""
    found: dict[str, list[str]] = {}
    for info in storage.list(f"{target}/"):
        parts = split_backup_key(info.key)
        if parts is not None and parts[0] == target and is_verify_name(parts[2]):
            found.setdefault(parts[1], []).append(info.key)
    return found


def latest_verification(storage: Storage, manifest: Manifest) -> Verification | None:
    """Return the most recent verification record of a backup, or None when it was never verified.

    Raises ManifestError when the newest record is malformed, StorageError on storage failure.
    """
    keys = sorted(
        info.key for info in storage.list(manifest.prefix + "/") if is_verify_name(info.key.rsplit("/", 1)[-1])
    )
    if not keys:
        return None
    return read_verification(storage, keys[-1])


def newest_verified_id(
    storage: Storage,
    target: str,
    backups: Iterable[Manifest] | None = None,
    primary: Storage | None = None,
) -> str | None:
    """Return the id of the newest complete backup whose most recent verification passed, or None.

    ``backups`` (newest first, as ``list_backups`` returns them) saves a listing when the
    caller has it. A backup whose latest record failed is not "verified", even if an older
    record passed. A malformed record counts as not verified. With ``primary`` (the target's
    primary storage, when ``storage`` is one of its secondaries), a backup with no record in
    ``storage`` takes the verdict of its latest record in ``primary`` if both manifests name
    the same artifacts (module docstring); a record of its own always wins, since it checked
    these very bytes. Raises StorageError.
    """
    if backups is None:
        backups = list_backups(storage, target)
    records = _record_keys(storage, target)
    vouching = _record_keys(primary, target) if primary is not None and primary.name != storage.name else {}
    for manifest in backups:
        source, keys = storage, records.get(manifest.id)
        if not keys and manifest.id in vouching and primary is not None and _same_artifacts(primary, manifest):
            source, keys = primary, vouching[manifest.id]
        if not keys:
            continue
        newest = max(keys)
        try:
            record = read_verification(source, newest)
        except VerificationFailed as exc:
            log.warning("unreadable verification record ignored", key=newest, error=exc.message)
            continue
        if record.passed:
            return manifest.id
    return None


def _same_artifacts(primary: Storage, copy: Manifest) -> bool:
    """Return True when ``primary`` holds a manifest of ``copy``'s backup naming the same stored bytes.

    Compares each artifact's name, stored size and stored sha256. False when the primary has no
    readable manifest of that id (deleted, being deleted, malformed): its records then vouch for
    nothing. Raises StorageError when the primary cannot be read at all.
    """
    try:
        theirs = read_manifest(primary, copy.target, copy.id)
    except (ObjectNotFound, VerificationFailed):  # ManifestError is a VerificationFailed
        return False
    return _stored_bytes(theirs) == _stored_bytes(copy)


def _stored_bytes(manifest: Manifest) -> frozenset[tuple[str, int, str]]:
    """Return what a verification of ``manifest``'s backup checks: (artifact name, stored size, stored sha256)."""
    return frozenset((a.name, a.size, a.sha256) for a in manifest.artifacts)


def latest_verify_run(storage: Storage, target: str) -> Verification | None:
    """Return the newest record of kind ``verify`` of any backup of ``target``, or None.

    The time in the record's name orders them across backups; drill verdicts (kind
    ``drill``) are skipped, and so are unreadable records. Only the newest few records are
    read, so a target verified thousands of times costs one listing. Raises StorageError.
    """
    keys = sorted(
        ((key.rsplit("/", 1)[-1], key) for keys in _record_keys(storage, target).values() for key in keys),
        reverse=True,
    )
    for _, key in keys[:_MAX_RECORDS_READ]:
        try:
            record = read_verification(storage, key)
        except (ManifestError, ObjectNotFound):
            continue
        if record.kind == VERIFY_KIND:
            return record
    return None
