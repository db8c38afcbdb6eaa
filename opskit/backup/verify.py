"""``opskit backup verify``: prove a stored backup is intact, and record that it was checked.

Levels of checking, per artifact:

- ``stored`` (needs no key): stream the object, compare its size and sha256 with the manifest.
- ``full`` (the artifact is not encrypted, or ``[encryption] identity`` is configured):
  stream, decrypt and decompress it (``artifacts.read_artifact``), which checks the stored
  and plain sizes and sha256s; the db artifact is also fed to ``pg_restore --list``, which
  must read the archive's table of contents.

The result is recorded as ``<target>/<id>/verify-<UTC time>.json`` (time, level, every
check with expected and actual, verdict), pass or fail, so retention protects the newest
verified backup and ``status`` can show it. Drills may record their verdict the same way
with :func:`record_verification` (``kind="drill"``); retention honours both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from opskit import __version__, catalog, pipeline
from opskit.catalog import Artifact, Manifest, artifacts
from opskit.context import AppContext
from opskit.core.errors import ConfigError, ManifestError, ObjectNotFound, RestoreFailed, VerificationFailed
from opskit.core.log import get_logger
from opskit.pg import tools
from opskit.pg.archive import TocReader
from opskit.pipeline import Discard
from opskit.storage.base import Storage, join_key

log = get_logger(__name__)
RECORD_FORMAT = 1
PASS = "pass"
FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One comparison: what was checked on which artifact, expected and actual, and whether they agree."""

    artifact: str
    check: str
    expected: Any
    actual: Any
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form."""
        return {
            "artifact": self.artifact,
            "check": self.check,
            "expected": self.expected,
            "actual": self.actual,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Verification:
    """One recorded verification (or drill verdict) of a backup."""

    target: str
    backup_id: str
    storage: str
    time: datetime
    kind: str  # "verify" or "drill"
    level: str  # "stored" or "full"
    verdict: str  # "pass" or "fail"
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

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready record as stored in ``verify-<time>.json``."""
        return {
            "format_version": RECORD_FORMAT,
            "kind": self.kind,
            "target": self.target,
            "backup_id": self.backup_id,
            "storage": self.storage,
            "time": catalog.format_time(self.time),
            "opskit_version": __version__,
            "level": self.level,
            "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Any, key: str = "") -> Verification:
        """Build from a stored record. Raises ManifestError (exit 5) when it is malformed."""
        try:
            checks = tuple(
                Check(str(c["artifact"]), str(c["check"]), c.get("expected"), c.get("actual"), bool(c["ok"]))
                for c in data.get("checks", [])
            )
            return cls(
                target=str(data["target"]),
                backup_id=str(data["backup_id"]),
                storage=str(data.get("storage", "")),
                time=catalog.parse_time(str(data["time"])),
                kind=str(data.get("kind", "verify")),
                level=str(data.get("level", "")),
                verdict=str(data["verdict"]),
                checks=checks,
                key=key,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"verification record '{key}' is malformed: {exc}") from exc


@dataclass
class VerifyReport:
    """Every verification one run made."""

    verifications: list[Verification] = field(default_factory=list)

    @property
    def failures(self) -> list[Verification]:
        """Return the verifications that failed."""
        return [v for v in self.verifications if not v.passed]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready report."""
        return {"verifications": [v.to_dict() for v in self.verifications], "failed": len(self.failures)}


class VerifyFailed(VerificationFailed):
    """At least one backup failed verification; ``report`` holds every result (exit 5)."""

    def __init__(self, message: str, report: VerifyReport, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


# --------------------------------------------------------------------------- records


def verify_key(target: str, backup_id: str, moment: datetime) -> str:
    """Return ``<target>/<id>/verify-<UTC time>.json``; keys sort in time order."""
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return join_key(target, backup_id, f"{catalog.VERIFY_PREFIX}{stamp}.json")


def _is_verify_key(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith(catalog.VERIFY_PREFIX) and name.endswith(".json")


def record_verification(storage: Storage, verification: Verification) -> str:
    """Store ``verification`` next to its backup's manifest and return the key. Raises StorageError."""
    key = verify_key(verification.target, verification.backup_id, verification.time)
    catalog.write_json(storage, key, verification.to_dict())
    return key


def latest_verification(storage: Storage, manifest: Manifest) -> Verification | None:
    """Return the most recent verification record of a backup, or None when it was never verified.

    Raises ManifestError when the newest record is malformed, StorageError on storage failure.
    """
    keys = sorted(info.key for info in storage.list(manifest.prefix + "/") if _is_verify_key(info.key))
    if not keys:
        return None
    return Verification.from_dict(catalog.read_json(storage, keys[-1]), keys[-1])


def newest_verified_id(storage: Storage, target: str, backups: list[Manifest] | None = None) -> str | None:
    """Return the id of the newest complete backup whose most recent verification passed, or None.

    ``backups`` (newest first, as ``catalog.list_backups`` returns them) saves a listing
    when the caller has it. A backup whose latest record failed is not "verified", even if
    an older record passed. A malformed record counts as not verified.
    """
    if backups is None:
        backups = catalog.list_backups(storage, target)
    records: dict[str, list[str]] = {}
    for info in storage.list(f"{target}/"):
        parts = info.key.split("/")
        if len(parts) == 3 and _is_verify_key(info.key):
            records.setdefault(parts[1], []).append(info.key)
    for manifest in backups:
        keys = records.get(manifest.id)
        if not keys:
            continue
        newest = max(keys)
        try:
            record = Verification.from_dict(catalog.read_json(storage, newest), newest)
        except VerificationFailed as exc:
            log.warning("unreadable verification record ignored", key=newest, error=exc.message)
            continue
        if record.passed:
            return manifest.id
    return None


# --------------------------------------------------------------------------- the action


def run(
    ctx: AppContext,
    selector: str | None = None,
    all_backups: bool = False,
    target: str | None = None,
    storage: str | None = None,
) -> VerifyReport:
    """Verify the backup ``selector`` names (id, prefix, default ``latest``), or all with ``all_backups``.

    Checks the target's primary storage unless ``storage`` is given. Every result is
    recorded next to its manifest (not in dry-run). Returns the VerifyReport; raises
    VerifyFailed (exit 5) naming the artifact and check of each failure, ConfigError for
    unknown names or backups, UnreachableError when no usable pg_restore exists.
    """
    target_config = ctx.target(target)
    storage_name = storage or target_config.primary_storage
    if storage_name not in target_config.storages:
        raise ConfigError(
            f"target '{target_config.name}' does not use storage '{storage_name}'",
            hint=f"its storages: {', '.join(target_config.storages)}",
        )
    store = ctx.storage(storage_name)
    if all_backups:
        manifests = catalog.list_backups(store, target_config.name)
    else:
        manifests = [catalog.find_backup(store, target_config.name, selector or "latest")]
    identities = _identities(ctx)
    bin_dir = target_config.pg_bin_dir or ctx.config.tools.pg_bin_dir
    report = VerifyReport()
    for manifest in manifests:
        with structlog.contextvars.bound_contextvars(target=manifest.target, backup_id=manifest.id):
            verification = verify_backup(ctx, store, manifest, identities, bin_dir)
            if not ctx.dry_run:
                record_verification(store, verification)
            report.verifications.append(verification)
            failure = verification.first_failure
            log.info(
                "backup verified",
                storage=storage_name,
                level=verification.level,
                verdict=verification.verdict,
                failed_check=failure.check if failure else None,
            )
    if report.failures:
        names = "; ".join(_failure_text(v) for v in report.failures)
        raise VerifyFailed(
            f"{len(report.failures)} of {len(report.verifications)} backup(s) failed verification: {names}",
            report,
            hint="do not rely on these backups: restore another one or a copy from another storage",
        )
    return report


def _failure_text(verification: Verification) -> str:
    check = verification.first_failure
    if check is None:
        return verification.backup_id
    return (
        f"backup {verification.backup_id} artifact '{check.artifact}': {check.check} "
        f"(expected {check.expected}, got {check.actual})"
    )


def _identities(ctx: AppContext) -> list[Any]:
    ref = ctx.config.encryption.identity
    if ref is None:
        return []
    return pipeline.parse_identities(ref.resolve())


def verify_backup(
    ctx: AppContext, store: Storage, manifest: Manifest, identities: list[Any], bin_dir: str | None
) -> Verification:
    """Check every artifact of one backup and return the Verification (not yet recorded).

    Mismatches become failed checks, not exceptions; StorageError and UnreachableError
    (no usable pg_restore) propagate.
    """
    started = ctx.clock()
    checks: list[Check] = []
    full = all(not a.encryption for a in manifest.artifacts) or bool(identities)
    for artifact in manifest.artifacts:
        if full:
            checks.extend(_check_full(ctx, store, manifest, artifact, identities, bin_dir))
        else:
            checks.extend(_check_stored(ctx, store, artifact))
    verdict = PASS if checks and all(c.ok for c in checks) else FAIL
    return Verification(
        target=manifest.target,
        backup_id=manifest.id,
        storage=store.name,
        time=started,
        kind="verify",
        level="full" if full else "stored",
        verdict=verdict,
        checks=tuple(checks),
    )


def _check_stored(ctx: AppContext, store: Storage, artifact: Artifact) -> list[Check]:
    """Stream the object and compare its stored size and sha256 with the manifest."""
    try:
        stats = artifacts.hash_stored(store, artifact, cancel=ctx.cancel)
    except ObjectNotFound:
        return [_missing(artifact)]
    return [
        Check(artifact.name, "stored size", artifact.size, stats.size, artifact.size == stats.size),
        Check(artifact.name, "stored sha256", artifact.sha256, stats.sha256, artifact.sha256 == stats.sha256),
    ]


def _check_full(
    ctx: AppContext,
    store: Storage,
    manifest: Manifest,
    artifact: Artifact,
    identities: list[Any],
    bin_dir: str | None,
) -> list[Check]:
    """Decrypt + decompress with both hashes checked; feed the db artifact to ``pg_restore --list``."""
    if not store.exists(artifact.key):
        return [_missing(artifact)]
    toc: TocReader | None = None
    try:
        if artifact.name == catalog.DUMP_ARTIFACT:
            tool = tools.find_tool("pg_restore", _dump_major(manifest), bin_dir)
            toc = TocReader(tool.path)
            with toc:
                result = artifacts.read_artifact(
                    store, artifact, toc, identities=identities, backup_id=manifest.id, cancel=ctx.cancel
                )
        else:
            result = artifacts.read_artifact(
                store, artifact, Discard(), identities=identities, backup_id=manifest.id, cancel=ctx.cancel
            )
    except ObjectNotFound:
        return [_missing(artifact)]
    except RestoreFailed as exc:
        # No identity fits the recipients: the backup cannot be restored with this configuration.
        return [Check(artifact.name, "decrypt with the configured identity", "decrypts", exc.message, False)]
    except VerificationFailed as exc:
        # read_artifact stops at the first problem; hash the stored bytes again so the record says
        # whether the object itself changed or only its decoded content is wrong.
        stored = _check_stored(ctx, store, artifact)
        detail = Check(artifact.name, "decrypt, decompress and plain sha256", "intact", exc.message, False)
        return [*stored, detail] if all(c.ok for c in stored) else stored
    checks = [
        Check(artifact.name, "stored size", artifact.size, result.stored.size, True),
        Check(artifact.name, "stored sha256", artifact.sha256, result.stored.sha256, True),
        Check(artifact.name, "plain size", artifact.plain_size, result.plain.size, True),
        Check(artifact.name, "plain sha256", artifact.plain_sha256, result.plain.sha256, True),
    ]
    if toc is not None:
        checks.append(
            Check(artifact.name, "pg_restore --list", "a readable table of contents", toc.describe(), toc.readable)
        )
    return checks


def _missing(artifact: Artifact) -> Check:
    return Check(artifact.name, "object exists", artifact.key, "missing", False)


def _dump_major(manifest: Manifest) -> int:
    """Return the lowest pg_restore major that can read the dump: the newer of server and pg_dump."""
    majors = [manifest.server.get("major"), (manifest.tools.get("pg_dump") or {}).get("major")]
    return max((int(m) for m in majors if isinstance(m, int)), default=0)
