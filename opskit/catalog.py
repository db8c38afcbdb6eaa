"""Backups in a storage: the manifest model, the object layout, and finding backups.

Layout, relative to the storage prefix::

    <target>/<backup_id>/db.dump.zst[.age]        pg_dump -Fc, zstd, optionally age
    <target>/<backup_id>/globals.sql.zst[.age]    pg_dumpall --globals-only
    <target>/<backup_id>/manifest.json            written LAST: its presence makes the backup exist
    <target>/<backup_id>/pin.json                 present while the backup is pinned
    <target>/<backup_id>/verify-<time>.json       one per verification run
    <target>/drills/<drill_id>.json / .md         drill reports

A backup exists when its manifest exists. Retention and "latest" use the times recorded
in manifests, never object names or storage timestamps.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from opskit.errors import ConfigError, ManifestError, ObjectNotFound
from opskit.storage import Storage, join_key

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PIN_NAME = "pin.json"
VERIFY_PREFIX = "verify-"
DRILLS_DIR = "drills"
DUMP_ARTIFACT = "db"
GLOBALS_ARTIFACT = "globals"
LIST_CONCURRENCY = 16  # manifests read at once by list_backups
_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4,8}$")


def new_backup_id(snapshot_time: datetime) -> str:
    """Return a backup id: the snapshot's UTC time plus a short random suffix (``20261126T174200Z-3fa1``)."""
    return snapshot_time.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def is_backup_id(text: str) -> bool:
    """Return True when ``text`` has the shape of a backup id."""
    return bool(_ID_RE.match(text))


def format_time(moment: datetime) -> str:
    """Return an ISO 8601 UTC timestamp with a ``Z`` suffix, as stored in manifests."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse a stored timestamp into an aware UTC datetime. Raises ValueError."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without time zone: {text}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Artifact:
    """One stored object of a backup, with the checksums of its plain and stored bytes."""

    name: str  # "db" or "globals"
    key: str  # relative to the storage prefix
    size: int  # stored bytes
    sha256: str  # of the stored bytes (verifiable without the key)
    plain_size: int
    plain_sha256: str  # of pg_dump's output before compression/encryption
    compression: str = "zstd"
    encryption: Mapping[str, Any] | None = None  # {"format": "age", "recipients": [fingerprints]}


@dataclass(frozen=True)
class TableFacts:
    """Facts about one table, taken inside pg_dump's own snapshot."""

    schema: str
    name: str
    rows: int
    fingerprint: str | None = None

    @property
    def qualified(self) -> str:
        """Return ``schema.name``."""
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Manifest:
    """Everything known about one complete backup. Serialized as ``manifest.json``."""

    id: str
    target: str
    opskit_version: str
    snapshot_time: datetime
    started_at: datetime
    finished_at: datetime
    server: Mapping[str, Any]
    tools: Mapping[str, Any]
    artifacts: tuple[Artifact, ...]
    tables: tuple[TableFacts, ...] = ()
    labels: tuple[str, ...] = ()
    migration_version: str | None = None
    objects: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        """Return the stored size of all artifacts together."""
        return sum(a.size for a in self.artifacts)

    @property
    def prefix(self) -> str:
        """Return the key prefix of this backup's objects."""
        return backup_prefix(self.target, self.id)

    @property
    def encrypted(self) -> bool:
        """Return True when the artifacts are age-encrypted."""
        return any(a.encryption for a in self.artifacts)

    @property
    def database(self) -> str:
        """Return the name of the database that was backed up."""
        return str(self.server.get("database", ""))

    def artifact(self, name: str) -> Artifact:
        """Return the artifact named ``db`` or ``globals``. Raises ManifestError when absent."""
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise ManifestError(f"backup {self.id} has no '{name}' artifact")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form of the manifest."""
        data = asdict(self)
        for key in ("snapshot_time", "started_at", "finished_at"):
            data[key] = format_time(getattr(self, key))
        data["artifacts"] = [asdict(a) for a in self.artifacts]
        data["tables"] = [asdict(t) for t in self.tables]
        data["labels"] = list(self.labels)
        return data

    def to_json(self) -> bytes:
        """Return the manifest as UTF-8 JSON bytes."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False).encode("utf-8") + b"\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build a Manifest from parsed JSON. Raises ManifestError for anything malformed."""
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        try:
            version = data.get("format_version")
            if version != FORMAT_VERSION:
                raise ManifestError(
                    f"manifest format_version {version!r} is not supported (expected {FORMAT_VERSION})",
                    hint="upgrade opskit to read it",
                )
            artifacts = tuple(Artifact(**_only(a, Artifact)) for a in _list(data, "artifacts"))
            tables = tuple(TableFacts(**_only(t, TableFacts)) for t in _list(data, "tables", required=False))
            manifest = cls(
                id=_str(data, "id"),
                target=_str(data, "target"),
                opskit_version=_str(data, "opskit_version"),
                snapshot_time=parse_time(_str(data, "snapshot_time")),
                started_at=parse_time(_str(data, "started_at")),
                finished_at=parse_time(_str(data, "finished_at")),
                server=_dict(data, "server"),
                tools=_dict(data, "tools"),
                artifacts=artifacts,
                tables=tables,
                labels=tuple(str(label) for label in _list(data, "labels", required=False)),
                migration_version=data.get("migration_version"),
                objects=_dict(data, "objects", required=False),
                extra=_dict(data, "extra", required=False),
            )
        except ManifestError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            # OverflowError: a timestamp such as 0001-01-01T00:00+01:00 has no UTC equivalent.
            raise ManifestError(f"manifest is malformed: {exc}") from exc
        for artifact in artifacts:
            if not _fields_have_types(artifact, _ARTIFACT_TYPES):
                raise ManifestError(f"manifest artifact '{artifact.name}' is malformed")
        for table in tables:
            if not _fields_have_types(table, _TABLE_TYPES):
                raise ManifestError(f"manifest table entry '{table.schema}.{table.name}' is malformed")
        if manifest.migration_version is not None and not isinstance(manifest.migration_version, str):
            raise ManifestError("manifest field 'migration_version' is not a string")
        return manifest

    @classmethod
    def from_json(cls, payload: bytes) -> Manifest:
        """Parse manifest bytes. Raises ManifestError for invalid JSON or content."""
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


# Field -> accepted types, checked after parsing so later code can trust them (bool is no int here).
_ARTIFACT_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "key": (str,), "size": (int,), "sha256": (str,), "plain_size": (int,),
    "plain_sha256": (str,), "compression": (str,), "encryption": (dict, type(None)),
}
_TABLE_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (str,), "name": (str,), "rows": (int,), "fingerprint": (str, type(None)),
}


def _fields_have_types(item: Any, types: Mapping[str, tuple[type, ...]]) -> bool:
    """Return True when every field of the dataclass ``item`` has one of its accepted types."""
    for name, kinds in types.items():
        value = getattr(item, name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
    return True


def _only(value: Any, kind: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"manifest {kind.__name__.lower()} entry is not an object")
    allowed = kind.__dataclass_fields__  # type: ignore[attr-defined]
    return {k: v for k, v in value.items() if k in allowed}


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ManifestError(f"manifest field '{key}' is missing or not a string")
    return value


def _list(data: Mapping[str, Any], key: str, required: bool = True) -> list[Any]:
    value = data.get(key, None if required else [])
    if not isinstance(value, list):
        raise ManifestError(f"manifest field '{key}' is missing or not a list")
    return value


def _dict(data: Mapping[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key, None if required else {})
    if not isinstance(value, dict):
        raise ManifestError(f"manifest field '{key}' is missing or not an object")
    return value


# --------------------------------------------------------------------------- keys


def backup_prefix(target: str, backup_id: str) -> str:
    """Return ``<target>/<backup_id>``."""
    return join_key(target, backup_id)


def manifest_key(target: str, backup_id: str) -> str:
    """Return the key of a backup's manifest."""
    return join_key(target, backup_id, MANIFEST_NAME)


def artifact_key(target: str, backup_id: str, name: str, encrypted: bool) -> str:
    """Return the key of an artifact: ``db.dump.zst`` or ``globals.sql.zst``, plus ``.age`` when encrypted."""
    filename = {"db": "db.dump.zst", "globals": "globals.sql.zst"}[name]
    return join_key(target, backup_id, filename + (".age" if encrypted else ""))


def pin_key(target: str, backup_id: str) -> str:
    """Return the key of a backup's pin marker."""
    return join_key(target, backup_id, PIN_NAME)


def drills_prefix(target: str) -> str:
    """Return the prefix drill reports of a target are stored under."""
    return join_key(target, DRILLS_DIR)


# --------------------------------------------------------------------------- reading a storage


def write_manifest(storage: Storage, manifest: Manifest) -> None:
    """Write the manifest, which commits the backup. Call it only after every artifact is stored."""
    with storage.writer(manifest_key(manifest.target, manifest.id)) as out:
        out.write(manifest.to_json())


def read_json(storage: Storage, key: str) -> Any:
    """Read and parse a small JSON object. Raises ObjectNotFound, ManifestError for bad JSON."""
    with storage.reader(key) as inp:
        payload = inp.read()
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"object '{key}' in storage '{storage.name}' is not valid JSON: {exc}") from exc


def write_json(storage: Storage, key: str, data: Any) -> None:
    """Write a small JSON object under ``key``."""
    with storage.writer(key) as out:
        out.write(json.dumps(data, indent=2, default=str).encode("utf-8") + b"\n")


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


def list_backups(
    storage: Storage, target: str | None = None, bad: list[BadManifest] | None = None
) -> list[Manifest]:
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


def find_backup(storage: Storage, target: str, selector: str) -> Manifest:
    """Return the backup ``selector`` names: an id, a unique id prefix, or ``latest``.

    Raises ConfigError when nothing (or more than one backup) matches.
    """
    if selector == "latest":
        backups = list_backups(storage, target)
        if not backups:
            raise ConfigError(
                f"target '{target}' has no backups in storage '{storage.name}'",
                hint="take one with 'opskit backup now'",
            )
        return backups[0]
    if is_backup_id(selector):
        try:
            return read_manifest(storage, target, selector)
        except ObjectNotFound:
            raise ConfigError(
                f"backup {selector} of target '{target}' is not in storage '{storage.name}'",
                hint="see 'opskit backup list'",
            ) from None
    matches = [backup_id for _, backup_id in list_manifest_keys(storage, target) if backup_id.startswith(selector)]
    if len(matches) == 1:
        return read_manifest(storage, target, matches[0])
    if not matches:
        raise ConfigError(
            f"no backup of target '{target}' matches '{selector}' in storage '{storage.name}'",
            hint="see 'opskit backup list'",
        )
    raise ConfigError(f"'{selector}' matches {len(matches)} backups", hint="give more of the id")


def is_pinned(storage: Storage, manifest: Manifest) -> bool:
    """Return True when the backup has a pin marker."""
    return storage.exists(pin_key(manifest.target, manifest.id))
