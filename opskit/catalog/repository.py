"""Backups in a storage: committing, listing and finding them by their manifests.

Layout, relative to the storage prefix::

    <target>/<backup_id>/db.dump.zst[.age]        pg_dump -Fc, zstd, optionally age
    <target>/<backup_id>/globals.sql.zst[.age]    pg_dumpall --globals-only
    <target>/<backup_id>/manifest.json            written LAST: its presence makes the backup exist
    <target>/<backup_id>/pin.json                 present while the backup is pinned
    <target>/<backup_id>/verify-<time>.json       one per verification run
    <target>/drills/<drill_id>.json / .md         drill reports

A backup exists when its manifest exists. Retention and "latest" use the times recorded
in manifests, never object names or storage timestamps; "latest" is the newest backup
that is not future-dated (:mod:`opskit.plan.timeline` decides, against the injected clock). The other records have a module
each: ``pins``, ``verifications``, ``drills``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from opskit.catalog.layout import MANIFEST_NAME, is_backup_id, manifest_key
from opskit.catalog.manifest import Manifest
from opskit.core.clock import utc_now
from opskit.core.errors import ConfigError, ManifestError, ObjectNotFound
from opskit.core.log import get_logger
from opskit.plan import timeline
from opskit.storage.base import Storage

log = get_logger(__name__)

LIST_CONCURRENCY = 16  # manifests read at once by list_backups


def write_manifest(storage: Storage, manifest: Manifest) -> None:
    """Write the manifest, which commits the backup. Call it only after every artifact is stored."""
    with storage.writer(manifest_key(manifest.target, manifest.id), immutable=True) as out:
        out.write(manifest.to_json())


def read_manifest(storage: Storage, target: str, backup_id: str) -> Manifest:
    """Return the manifest of one backup. Raises ObjectNotFound when it does not exist."""
    with storage.reader(manifest_key(target, backup_id)) as inp:
        payload = inp.read()
    manifest = Manifest.from_json(payload)
    if manifest.id != backup_id or manifest.target != target:
        raise ManifestError(
            f"manifest at '{manifest_key(target, backup_id)}' describes {manifest.target}/{manifest.id}"
        )
    return manifest


def list_manifest_keys(storage: Storage, target: str | None = None) -> Iterator[tuple[str, str]]:
    """Yield (target, backup_id) for every manifest in the storage (or under one target)."""
    prefix = f"{target}/" if target else ""
    for info in storage.list(prefix):
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST_NAME and is_backup_id(parts[1]):
            yield parts[0], parts[1]


@dataclass(frozen=True)
class BadManifest:
    """A manifest that exists but cannot be read: listed so it is not silently ignored."""

    target: str
    backup_id: str
    error: str


def list_backups(storage: Storage, target: str | None = None, bad: list[BadManifest] | None = None) -> list[Manifest]:
    """Return every complete backup in the storage, newest snapshot first.

    Unreadable manifests are skipped; pass ``bad`` to collect them.
    """
    keys = list(list_manifest_keys(storage, target))

    def read(key: tuple[str, str]) -> Manifest | BadManifest | None:
        try:
            return read_manifest(storage, *key)
        except ObjectNotFound:
            return None  # deleted between list and read
        except ManifestError as exc:
            return BadManifest(key[0], key[1], exc.message)

    # Manifests are small and an object store answers each read in milliseconds: read them
    # concurrently, or listing thousands of backups takes minutes.
    if len(keys) > 4:
        with ThreadPoolExecutor(max_workers=LIST_CONCURRENCY, thread_name_prefix="opskit-list") as pool:
            found = list(pool.map(read, keys))
    else:
        found = [read(key) for key in keys]
    manifests = [item for item in found if isinstance(item, Manifest)]
    if bad is not None:
        bad.extend(item for item in found if isinstance(item, BadManifest))
    manifests.sort(key=lambda m: (m.snapshot_time, m.id), reverse=True)
    return manifests


def latest_backup(backups: list[Manifest], now: datetime) -> Manifest | None:
    """Return the newest of ``backups`` (newest first) that is not future-dated at ``now``, or None.

    A future-dated backup (a host with a wrong clock) is skipped with a warning: its age is
    unknown, so it must not stand for "latest" in restores, drills or verify.
    """
    for manifest in backups:
        if not timeline.is_future(manifest.snapshot_time, now):
            return manifest
        log.warning(
            "future-dated backup skipped as latest",
            backup_id=manifest.id,
            detail=timeline.describe_future(manifest.id, manifest.snapshot_time, now),
        )
    return None


def find_backup(
    storage: Storage, target: str, selector: str, now: datetime | None = None, kind: str | None = None
) -> Manifest:
    """Return the backup ``selector`` names: an id, a unique id prefix, or ``latest``.

    With ``kind`` (``logical`` or ``base``), ``latest`` is the newest backup of that kind and
    a backup of another kind named by id is refused with ConfigError.

    ``latest`` is the newest backup that is not future-dated at ``now`` (the caller's
    injected clock; the system clock when None). Raises ConfigError when nothing (or more
    than one backup) matches.
    """
    if selector == "latest":
        backups = [m for m in list_backups(storage, target) if kind is None or m.kind == kind]
        newest = latest_backup(backups, now if now is not None else utc_now())
        if newest is None:
            detail = f" (only {len(backups)} future-dated: fix the clock of the host that took them)" if backups else ""
            raise ConfigError(
                f"target '{target}' has no backups in storage '{storage.name}'{detail}",
                hint="take one with 'opskit backup now'",
            )
        return newest
    if is_backup_id(selector):
        try:
            return _of_kind(read_manifest(storage, target, selector), kind)
        except ObjectNotFound:
            raise ConfigError(
                f"backup {selector} of target '{target}' is not in storage '{storage.name}'",
                hint="see 'opskit backup list'",
            ) from None
    matches = [backup_id for _, backup_id in list_manifest_keys(storage, target) if backup_id.startswith(selector)]
    if len(matches) == 1:
        return _of_kind(read_manifest(storage, target, matches[0]), kind)
    if not matches:
        raise ConfigError(
            f"no backup of target '{target}' matches '{selector}' in storage '{storage.name}'",
            hint="see 'opskit backup list'",
        )
    raise ConfigError(f"'{selector}' matches {len(matches)} backups", hint="give more of the id")


def _of_kind(manifest: Manifest, kind: str | None) -> Manifest:
    """Return ``manifest`` when it is of ``kind`` (or no kind is asked for); raise ConfigError otherwise."""
    if kind is None or manifest.kind == kind:
        return manifest
    how = "with 'opskit restore --pitr'" if manifest.kind == "base" else "with 'opskit restore' (no --pitr)"
    raise ConfigError(f"backup {manifest.id} is a {manifest.kind} backup, not a {kind} one", hint=f"restore it {how}")
