"""The manifest: the typed record that commits a backup."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from opskit.catalog.layout import (
    DUMP_ARTIFACT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PIN_NAME,
    backup_prefix,
    format_time,
    is_verify_name,
    parse_time,
    split_backup_key,
)
from opskit.core.errors import ManifestError
from opskit.pg.databases import DatabaseIdentity
from opskit.pg.facts import TableFacts


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
    # "logical" (pg_dump) or "base" (pg_basebackup, for point-in-time recovery); manifests
    # written before base backups existed have no kind and are logical.
    kind: str = "logical"
    # Base backups only: timeline, start/stop LSN and time, the WAL segments the backup needs,
    # system identifier (see opskit.backup.base).
    base: Mapping[str, Any] = field(default_factory=dict)
    # How ``tables`` counted rows (opskit.pg.facts.ROW_COUNTS_*): "only" each table's own rows;
    # manifests written before the field counted inheritance children too ("inclusive").
    row_counts: str = "inclusive"

    @property
    def counts_children(self) -> bool:
        """Return True when ``tables`` counted each table with its inheritance children (an old manifest)."""
        return self.row_counts != "only"

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

    @property
    def database_identity(self) -> DatabaseIdentity | None:
        """Return the source database's encoding and locale (``server.identity``).

        Returns None for a backup made before opskit recorded them: it restores as before,
        with the destination server's defaults.
        """
        return DatabaseIdentity.from_dict(self.server.get("identity"))

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
                kind=str(data.get("kind", "logical")),
                base=_dict(data, "base", required=False),
                row_counts=str(data.get("row_counts", "inclusive")),
            )
            if manifest.kind not in ("logical", "base"):
                raise ManifestError(f"manifest field 'kind' ({manifest.kind!r}) is not 'logical' or 'base'")
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
        _check_content(manifest)
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
    "name": (str,),
    "key": (str,),
    "size": (int,),
    "sha256": (str,),
    "plain_size": (int,),
    "plain_sha256": (str,),
    "compression": (str,),
    "encryption": (dict, type(None)),
}
_TABLE_TYPES: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "name": (str,),
    "rows": (int,),
    "fingerprint": (str, type(None)),
}


def _check_content(manifest: Manifest) -> None:
    """Check what later code relies on, beyond types. Raises ManifestError naming the field.

    A manifest is the commit marker, so it must describe a backup that can be restored from
    its own objects: a ``db`` artifact, every key inside ``<target>/<id>/`` (a key into another
    backup's folder would restore that backup's data, and pruning it would break this one),
    sizes that are counts, and tool versions of the shape ``dump_major`` reads.
    """
    names = [a.name for a in manifest.artifacts]
    if DUMP_ARTIFACT not in names:
        raise ManifestError(f"manifest field 'artifacts' has no '{DUMP_ARTIFACT}' artifact: the backup has no dump")
    if len(set(names)) != len(names):
        raise ManifestError("manifest field 'artifacts' names an artifact twice")
    for artifact in manifest.artifacts:
        field_path = f"artifacts.{artifact.name}"
        parts = split_backup_key(artifact.key)
        if parts is None or parts[:2] != (manifest.target, manifest.id) or not _is_artifact_name(parts[2]):
            raise ManifestError(
                f"manifest field '{field_path}.key' ({artifact.key!r}) is not an object of this backup "
                f"(expected a name under '{manifest.prefix}/')"
            )
        for size_field in ("size", "plain_size"):
            if getattr(artifact, size_field) < 0:
                raise ManifestError(f"manifest field '{field_path}.{size_field}' is negative")
    for table in manifest.tables:
        if table.rows < 0:
            raise ManifestError(f"manifest field 'tables.{table.schema}.{table.name}.rows' is negative")
    for tool in ("pg_dump", "pg_dumpall"):
        if tool not in manifest.tools:
            continue
        entry = manifest.tools[tool]
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest field 'tools.{tool}' is not an object")
        major = entry.get("major")  # absent: any client tool is tried (dump_major returns 0)
        if major is not None and (isinstance(major, bool) or not isinstance(major, int) or major < 0):
            raise ManifestError(f"manifest field 'tools.{tool}.major' is not a non-negative integer")
    server_major = manifest.server.get("major")
    if server_major is not None and (isinstance(server_major, bool) or not isinstance(server_major, int)):
        raise ManifestError("manifest field 'server.major' is not an integer")


def _is_artifact_name(name: str) -> bool:
    """Return True for an object name that may hold an artifact (not another record of the backup)."""
    return name not in (MANIFEST_NAME, PIN_NAME, ".", "..") and not is_verify_name(name)


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
