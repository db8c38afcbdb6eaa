"""``opskit backup verify``: prove a stored backup is intact, and record that it was checked.

Levels of checking, per artifact:

- ``stored`` (needs no key): stream the object, compare its size and sha256 with the manifest.
- ``full`` (the artifact is not encrypted, or ``[encryption] identity`` is configured):
  stream, decrypt and decompress it (``artifacts.read_artifact``), which checks the stored
  and plain sizes and sha256s; the db artifact is also fed to ``pg_restore --list``, which
  must read the archive's table of contents. A configured identity that fits none of the
  backup's recipients says nothing about the backup: it exits 4 as restore does and records
  no verdict (with ``--all``, the other backups are verified first).

The result is recorded as ``<target>/<id>/verify-<UTC time>.json`` (time, level, every
check with expected and actual, verdict), pass or fail, so retention protects the newest
verified backup and ``status`` can show it. Drills may record their verdict the same way
with :func:`record_verification` (``kind="drill"``); retention honours both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from opskit import catalog
from opskit.catalog import (
    FAIL,
    PASS,
    Artifact,
    Check,
    Verification,
    latest_verification,
    newest_verified_id,
    record_verification,
    verify_key,
)
from opskit.context import AppContext
from opskit.core.errors import (
    ConfigError,
    ObjectNotFound,
    RestoreFailed,
    VerificationFailed,
    VerifyFailed,
)
from opskit.core.log import get_logger
from opskit.core.progress import ByteProgress
from opskit.pg.archive import TocReader
from opskit.pipeline import Discard, Progress
from opskit.plan import timeline
from opskit.restore.reader import BackupReader, OpenedBackup

log = get_logger(__name__)
# The record types and their storage live in the catalog (the one owner of stored records);
# they are re-exported here for callers that still import them from verify.
__all__ = [
    "FAIL",
    "PASS",
    "Check",
    "Verification",
    "VerifyReport",
    "latest_verification",
    "newest_verified_id",
    "record_verification",
    "run",
    "verify_backup",
    "verify_key",
]


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


# --------------------------------------------------------------------------- the action


def _verify_each_database(
    ctx: AppContext, server: str, selector: str | None, all_backups: bool, storage: str | None
) -> VerifyReport:
    """Verify each derived target of server target ``server`` the catalog holds (config/databases.py).

    Returns the merged report; raises VerifyFailed (5) naming every failure once all were tried.
    """
    report = VerifyReport()
    failures: list[str] = []
    for name in catalog.expand_targets(ctx.config, ctx.storage, [server]):
        try:
            part = run(ctx, selector=selector, all_backups=all_backups, target=name, storage=storage)
        except VerifyFailed as exc:
            failures.append(exc.message)
            part = exc.report if isinstance(exc.report, VerifyReport) else VerifyReport()
        report.verifications.extend(part.verifications)
    if failures:
        raise VerifyFailed(
            f"server target '{server}': {'; '.join(failures)}",
            hint="do not rely on these backups: restore another one or a copy from another storage",
            report=report,
        )
    return report


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
    VerifyFailed (exit 5) naming the artifact and check of each failure, RestoreFailed
    (exit 4, nothing recorded for that backup) when the configured identity fits none of a
    backup's recipients, ConfigError for unknown names or backups, UnreachableError when no
    usable pg_restore exists.
    """
    target_config = ctx.target(target)
    if target_config.is_server:
        return _verify_each_database(ctx, target_config.name, selector, all_backups, storage)
    storage_name = storage or target_config.primary_storage
    if storage_name not in target_config.storages:
        raise ConfigError(
            f"target '{target_config.name}' does not use storage '{storage_name}'",
            hint=f"its storages: {', '.join(target_config.storages)}",
        )
    store = ctx.storage(storage_name)
    bad: list[catalog.BadManifest] = []  # unreadable or malformed manifests: corrupt backups, reported
    if all_backups:
        manifests = catalog.list_backups(store, target_config.name, bad=bad)
    else:
        manifests = [catalog.find_backup(store, target_config.name, selector or "latest", now=ctx.clock())]
    reader = BackupReader(ctx, store, target_config.pg_bin_dir or ctx.config.tools.pg_bin_dir)
    report = VerifyReport()
    undecryptable: list[RestoreFailed] = []  # the identity fits none of their recipients: no verdict
    for manifest in manifests:
        with structlog.contextvars.bound_contextvars(target=manifest.target, backup_id=manifest.id):
            if timeline.is_future(manifest.snapshot_time, ctx.clock()):
                log.warning(
                    "future-dated backup",
                    detail=timeline.describe_future(manifest.id, manifest.snapshot_time, ctx.clock()),
                )
            try:
                verification = verify_backup(ctx, reader.open(manifest))
            except RestoreFailed as exc:
                if not all_backups:
                    raise
                log.warning("backup not verified: the identity does not fit", error=exc.message)
                undecryptable.append(exc)
                continue
            if not ctx.dry_run:
                # A shared repository lock: a prune (exclusive) never deletes the backup while its
                # record is written; during a prune this exits 7 naming it.
                with catalog.locked(store, manifest.target, "verify", clock=ctx.clock):
                    record_verification(store, verification)
            report.verifications.append(verification)
            failure = verification.first_failure
            log.info(
                "backup verified",
                storage=storage_name,
                level=verification.level,
                verdict=verification.verdict,
                failed_check=failure.name if failure else None,
            )
    corrupt = [f"backup {b.backup_id}: {b.error}" for b in bad]
    if report.failures or corrupt:
        names = "; ".join([_failure_text(v) for v in report.failures] + corrupt)
        failed, total = len(report.failures) + len(corrupt), len(report.verifications) + len(corrupt)
        unverified = f"; {len(undecryptable)} not verified: the identity fits none of their recipients"
        raise VerifyFailed(
            f"{failed} of {total} backup(s) failed verification: {names}" + (unverified if undecryptable else ""),
            hint="do not rely on these backups: restore another one or a copy from another storage",
            report=report,
        )
    if undecryptable:
        raise _not_decryptable(undecryptable, len(report.verifications))
    return report


def _not_decryptable(errors: list[RestoreFailed], verified: int) -> RestoreFailed:
    """Return the error for the backups of a ``--all`` run that the configured identity cannot decrypt (exit 4)."""
    if len(errors) == 1 and not verified:
        return errors[0]
    return RestoreFailed(
        f"{len(errors)} backup(s) not verified, {verified} verified and intact: {errors[0].message}"
        + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
        hint=errors[0].hint,
    )


def _failure_text(verification: Verification) -> str:
    check = verification.first_failure
    if check is None:
        return verification.backup_id
    return (
        f"backup {verification.backup_id} artifact '{check.subject}': {check.name} "
        f"(expected {check.expected}, got {check.actual})"
    )


def verify_backup(ctx: AppContext, backup: OpenedBackup) -> Verification:
    """Check every artifact of one opened backup and return the Verification (not yet recorded).

    Mismatches become failed checks, not exceptions; StorageError, ConfigError (an unusable
    identity), RestoreFailed (4: the configured identity fits no recipient, which says nothing
    about the backup, so no verdict may be recorded) and UnreachableError (no usable
    pg_restore) propagate.
    """
    started = ctx.clock()
    manifest = backup.manifest
    checks: list[Check] = []
    full = not manifest.encrypted or bool(backup.identities)
    if full:
        # A key that does not fit is the configuration's fault: raise before any check is made.
        for artifact in manifest.artifacts:
            backup.check_can_decrypt(artifact.name)
    for artifact in manifest.artifacts:
        # The progress counts plain bytes when decoding, stored bytes otherwise.
        expected = artifact.plain_size if full else artifact.size
        with ByteProgress(f"verify {manifest.id} {artifact.name}", ctx.interactive, expected=expected) as progress:
            if full:
                checks.extend(_check_full(backup, artifact, progress))
            else:
                checks.extend(_check_stored(backup, artifact, progress))
    verdict = PASS if checks and all(c.ok for c in checks) else FAIL
    return Verification(
        target=manifest.target,
        backup_id=manifest.id,
        storage=backup.storage.name,
        time=started,
        kind="verify",
        level="full" if full else "stored",
        verdict=verdict,
        checks=tuple(checks),
    )


def _check_stored(backup: OpenedBackup, artifact: Artifact, progress: Progress | None = None) -> list[Check]:
    """Stream the object and compare its stored size and sha256 with the manifest."""
    try:
        stats = backup.hash_stored(artifact.name, progress=progress)
    except ObjectNotFound:
        return [_missing(artifact)]
    return [
        Check(artifact.name, "stored size", artifact.size, stats.size, artifact.size == stats.size),
        Check(artifact.name, "stored sha256", artifact.sha256, stats.sha256, artifact.sha256 == stats.sha256),
    ]


def _check_full(backup: OpenedBackup, artifact: Artifact, progress: Progress | None = None) -> list[Check]:
    """Decrypt + decompress with both hashes checked; feed the db artifact to ``pg_restore --list``."""
    if not backup.storage.exists(artifact.key):
        return [_missing(artifact)]
    toc: TocReader | None = None
    try:
        # A base backup's db artifact is a tar stream, not a pg_dump archive: its hashes are the check.
        if artifact.name == catalog.DUMP_ARTIFACT and backup.manifest.kind == "logical":
            toc = TocReader(backup.pg_restore())
            with toc:
                result = backup.read(artifact.name, toc, progress=progress)
        else:
            result = backup.read(artifact.name, Discard(), progress=progress)
    except ObjectNotFound:
        return [_missing(artifact)]
    except VerificationFailed as exc:
        # read_artifact stops at the first problem; hash the stored bytes again so the record says
        # whether the object itself changed or only its decoded content is wrong.
        stored = _check_stored(backup, artifact)
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
