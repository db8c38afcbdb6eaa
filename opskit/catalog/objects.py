"""Small JSON objects in a storage: the one place stored records are encoded and decoded.

Record modules (manifests aside, which carry their own encoding) read and write through
these two functions, so every record is UTF-8 JSON with the same indentation and the same
error for a broken object.
"""

from __future__ import annotations

import json

from opskit.core.errors import ManifestError
from opskit.storage.base import Storage

# A decoded JSON document: what ``json.loads`` returns.
JsonValue = object


def read_json(storage: Storage, key: str) -> JsonValue:
    """Return the parsed JSON object stored under ``key``.

    Raises ObjectNotFound when it does not exist, ManifestError (exit 5) when it is not
    valid UTF-8 JSON, StorageError when the storage fails.
    """
    with storage.reader(key) as inp:
        payload = inp.read()
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"object '{key}' in storage '{storage.name}' is not valid JSON: {exc}") from exc


def write_json(storage: Storage, key: str, data: JsonValue) -> None:
    """Write ``data`` as indented JSON under ``key`` (values JSON cannot hold become strings).

    Raises StorageError when the storage fails; nothing is visible under ``key`` then.
    """
    with storage.writer(key) as out:
        out.write(json.dumps(data, indent=2, default=str).encode("utf-8") + b"\n")
