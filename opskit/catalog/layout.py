"""Where everything lives in a storage: backup ids, times and object keys."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from opskit.storage.base import join_key

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PIN_NAME = "pin.json"
VERIFY_PREFIX = "verify-"
DRILLS_DIR = "drills"
DUMP_ARTIFACT = "db"
GLOBALS_ARTIFACT = "globals"
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


# --------------------------------------------------------------------------- keys


def backup_prefix(target: str, backup_id: str) -> str:
    """Return ``<target>/<backup_id>``."""
    return join_key(target, backup_id)


def manifest_key(target: str, backup_id: str) -> str:
    """Return the key of a backup's manifest."""
    return join_key(target, backup_id, MANIFEST_NAME)


def artifact_key(target: str, backup_id: str, name: str, encrypted: bool) -> str:
    """Return the key of an artifact: ``db.dump.zst`` or ``globals.sql.zst``, plus ``.age`` when encrypted."""
    filename = {DUMP_ARTIFACT: "db.dump.zst", GLOBALS_ARTIFACT: "globals.sql.zst"}[name]
    return join_key(target, backup_id, filename + (".age" if encrypted else ""))


def pin_key(target: str, backup_id: str) -> str:
    """Return the key of a backup's pin marker."""
    return join_key(target, backup_id, PIN_NAME)


def verify_key(target: str, backup_id: str, moment: datetime) -> str:
    """Return ``<target>/<id>/verify-<UTC time>.json``; the keys of one backup sort in time order."""
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return join_key(target, backup_id, f"{VERIFY_PREFIX}{stamp}.json")


def is_verify_name(name: str) -> bool:
    """Return True when the last part of a key names a verification record."""
    return name.startswith(VERIFY_PREFIX) and name.endswith(".json")


def drills_prefix(target: str) -> str:
    """Return the prefix drill reports of a target are stored under."""
    return join_key(target, DRILLS_DIR)


def drill_report_key(target: str, drill_id: str, extension: str) -> str:
    """Return the key of one rendering (``json``, ``md``, ``html``) of a drill report."""
    return join_key(drills_prefix(target), f"{drill_id}.{extension}")


def split_backup_key(key: str) -> tuple[str, str, str] | None:
    """Return (target, backup id, object name) for a key directly under a backup, else None.

    ``app/20261126T174200Z-3fa1/pin.json`` gives ``("app", "20261126T174200Z-3fa1", "pin.json")``;
    drill reports, deeper keys and names that are not backup ids give None.
    """
    parts = key.split("/")
    if len(parts) != 3 or not is_backup_id(parts[1]):
        return None
    return parts[0], parts[1], parts[2]
