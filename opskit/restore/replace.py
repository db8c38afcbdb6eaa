"""The routes that overwrite a database, built so nothing is destroyed before the restore can finish.

``--replace`` never drops first. It restores into a NEW database beside the destination
(``<db>_opskit_new_<hex>``, same server, same owner, the backup's encoding and locale), checks
its row counts against the manifest, and only then swaps the names: the destination is renamed
aside (``<db>_opskit_old_<hex>``), the new one takes its name, and the old one is dropped (or
kept with ``--keep-old``). Any failure before the swap drops the new database and leaves the
destination untouched; a failed second rename puts the old name back. The swap terminates the
sessions still connected to the destination (as ``DROP DATABASE ... WITH (FORCE)`` did before).
It needs room for two copies of the database until the old one is dropped.

``--clean`` restores over the destination's own objects, so it is refused unless the backup is
first proven readable end to end (:func:`prove_readable`: every stored and plain byte hashed,
the archive's table of contents parsed, which then orders the drops: see
:mod:`opskit.pg.clean_order`) and the key decrypts it: one extra read of the backup, no extra disk.
"""

from __future__ import annotations

import secrets as random_tokens
from collections.abc import Callable
from typing import Any

from opskit.catalog import Manifest
from opskit.config.model import TargetConfig
from opskit.context import AppContext
from opskit.core.errors import ConfigError, RestoreFailed, UnreachableError, VerificationFailed
from opskit.core.log import get_logger
from opskit.pg import databases
from opskit.pg import toc as dump_toc
from opskit.restore.reader import OpenedBackup
from opskit.restore.result import RestoreResult

log = get_logger(__name__)

# restore_backup's signature, passed in so this module does not import restore.py (restore.py imports it).
RestoreInto = Callable[..., RestoreResult]


def side_name(database: str, role: str, token: str) -> str:
    """Return ``<db>_opskit_<role>_<token>`` within PostgreSQL's 63-byte identifier limit."""
    suffix = f"_opskit_{role}_{token}"
    base = database.encode("utf-8")[: 63 - len(suffix)].decode("utf-8", "ignore")
    return base + suffix


class _ReadableProof:
    """A sink that discards the archive's plain bytes after parsing its table of contents."""

    def __init__(self) -> None:
        self.capture: dump_toc.TocCapture | None = dump_toc.TocCapture()
        self.toc: dump_toc.ArchiveToc | None = None

    def write(self, data: Any) -> int:
        if self.capture is not None:
            try:
                self.toc = self.capture.feed(data)
            except dump_toc.UnsupportedArchive:
                self.capture = None  # a version opskit cannot parse: pg_restore reads it, the hashes still count
            else:
                if self.toc is not None:
                    self.capture = None
        return len(data)


def prove_readable(backup: OpenedBackup) -> dump_toc.ArchiveToc | None:
    """Read the whole dump artifact, checking both hashes and its table of contents; write nothing.

    Returns the archive's table of contents (the order of the drops is decided from it), None
    for an archive version opskit cannot parse (pg_restore still reads it). Raises
    VerificationFailed (5) when a size or sha256 differs or the TOC is cut off, RestoreFailed (4)
    when no identity decrypts it, StorageError/ObjectNotFound for storage problems.
    """
    backup.check_can_decrypt()
    proof = _ReadableProof()
    backup.read("db", proof)
    if proof.capture is not None:
        try:
            return proof.capture.finish()
        except dump_toc.UnsupportedArchive as exc:
            raise VerificationFailed(
                f"backup {backup.manifest.id} cannot be restored: {exc}",
                hint="nothing was cleaned; restore another backup",
            ) from exc
    return proof.toc


def replace_database(
    restore_into: RestoreInto,
    ctx: AppContext,
    manifest: Manifest,
    storage_name: str,
    server: TargetConfig,
    database: str,
    *,
    jobs: int,
    no_owner: bool,
    keep_old: bool,
    identity: databases.DatabaseIdentity | None,
) -> RestoreResult:
    """Restore ``manifest`` into a new database and swap it in for ``database``; return the result.

    ``restore_into`` is :func:`opskit.restore.restore.restore_backup`. Raises ConfigError (2)
    when the role cannot create or rename databases (checked before anything is written),
    VerificationFailed (5) when the restored copy's row counts differ (the destination is
    untouched), and what the restore raises (4, 5), also with the destination untouched.
    """
    refusal = databases.replace_refusal(server, database)
    if refusal is not None:
        raise ConfigError(
            f"cannot replace database '{database}' on target '{server.name}': {refusal}",
            hint="grant it, or restore into a new database (omit --to) and switch the application over",
        )
    token = random_tokens.token_hex(3)
    new_name, old_name = side_name(database, "new", token), side_name(database, "old", token)
    owner = databases.database_owner(server, database)
    log.info("restoring beside the destination before replacing it", database=database, new=new_name)
    result = restore_into(
        ctx, manifest, storage_name, server, new_name, jobs=jobs, no_owner=no_owner, owner=owner, identity=identity
    )
    if not result.ok:
        _drop_quietly(server, new_name)
        raise mismatch_error(manifest, result, f"'{database}' was not touched; the copy was dropped")
    _swap(server, database, new_name, old_name)
    result.database = database
    result.created = False
    if keep_old:
        result.kept_old = old_name
        log.info("replaced the database; the old one is kept", database=database, old=old_name)
        return result
    try:
        databases.drop_database(server, old_name, wait=databases.DROP_RETRY_SECONDS)
    except (RestoreFailed, UnreachableError) as exc:
        result.kept_old = old_name
        log.warning(
            "the database was replaced, but the old one could not be dropped",
            old=old_name,
            error=exc.one_line(),
            command=databases.drop_command(server, old_name),
        )
    return result


def mismatch_error(manifest: Manifest, result: RestoreResult, left: str) -> VerificationFailed:
    """Return the error (5) for a restored copy whose row counts differ; ``left`` says what became of it."""
    first = result.mismatches[0]
    return VerificationFailed(
        f"the restored copy of backup {manifest.id} differs from its manifest in {len(result.mismatches)} "
        f"table(s) ({first.table}: expected {_rows(first.expected)}, got {_rows(first.actual)}); {left}",
        hint="verify the backup (opskit backup verify) or restore another one",
    )


def _rows(value: int | None) -> str:
    return "no such table" if value is None else f"{value} rows"


def _swap(server: TargetConfig, database: str, new_name: str, old_name: str) -> None:
    """Rename ``database`` aside and ``new_name`` into its place; on failure leave ``database`` as it was."""
    try:
        databases.rename_database(server, database, old_name)
    except BaseException:
        _drop_quietly(server, new_name)
        raise
    try:
        databases.rename_database(server, new_name, database)
    except BaseException:
        try:
            databases.rename_database(server, old_name, database)
        except Exception as exc:  # the first failure is the one to raise
            log.error(
                "the destination is renamed aside and could not be renamed back",
                database=database,
                aside=old_name,
                error=str(exc),
            )
        raise


def _drop_quietly(server: TargetConfig, name: str) -> None:
    try:
        databases.drop_database(server, name, wait=databases.DROP_RETRY_SECONDS)
    except Exception as exc:  # the caller's failure matters more
        log.warning(
            "could not drop a database this run created",
            database=name,
            error=str(exc),
            command=databases.drop_command(server, name),
        )
