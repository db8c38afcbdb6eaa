"""S3 Object Lock for :mod:`opskit.storage.s3`: retention on writes, version deletes, the bucket's setting.

- :func:`lock_args` is what a write of a backup object carries (``ObjectLockMode``,
  ``ObjectLockRetainUntilDate``), and :func:`ensure_retained` checks the object got it,
  setting it with PutObjectRetention when a store ignored the headers (moto does on
  CreateMultipartUpload; a managed copy cannot send them everywhere).
- :func:`delete_versions` deletes every version of a key on a bucket with Object Lock (always
  versioned): a plain DeleteObject would only add a delete marker and keep every byte. A
  version under retention is refused by S3 (403) and raised as ObjectLocked with its date.
- :func:`read_lock_state` asks the bucket whether Object Lock is enabled.

opskit never sends ``BypassGovernanceRetention``.
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from opskit.core.errors import OpskitError, StorageError
from opskit.storage.base import Immutability, LockState, delete_refused
from opskit.storage.retry import RetryPolicy
from opskit.storage.s3_errors import error_code as _code
from opskit.storage.s3_errors import http_status as _status

_NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound"})
_UNREADABLE_CODES = frozenset({"AccessDenied", "MethodNotAllowed", "NotImplemented"})


class S3Like(Protocol):
    """What these functions use of an S3 storage (``opskit.storage.s3.S3Storage``)."""

    name: str
    bucket: str
    retry: RetryPolicy
    immutability: Immutability | None

    @property
    def client(self) -> Any: ...

    def _call(self, action: str, key: str | None, fn: Callable[[], Any]) -> Any: ...

    def _error(self, action: str, key: str | None, exc: BaseException) -> StorageError: ...


def iso(moment: datetime) -> str:
    """Return ``2026-12-31T10:00:00Z`` for messages."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def lock_args(s: S3Like, immutable: bool) -> dict[str, Any]:
    """Return the Object Lock arguments of a write (empty unless ``immutable`` and configured)."""
    if not immutable or s.immutability is None:
        return {}
    return {
        "ObjectLockMode": s.immutability.mode.upper(),
        "ObjectLockRetainUntilDate": s.immutability.retain_until(datetime.now(UTC)),
    }


def ensure_retained(s: S3Like, name: str, key: str, lock: dict[str, Any]) -> None:
    """Check that the object just written carries its retention; set it when the store ignored it.

    Raises StorageError when the retention cannot be set (the object stays, unlocked).
    """
    if not lock:
        return
    head = s._call("checking the retention of", key, lambda: s.client.head_object(Bucket=s.bucket, Key=name))
    until = head.get("ObjectLockRetainUntilDate")
    if until is not None and until >= lock["ObjectLockRetainUntilDate"].replace(microsecond=0):
        return
    retention = {"Mode": lock["ObjectLockMode"], "RetainUntilDate": lock["ObjectLockRetainUntilDate"]}
    version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
    s._call(
        "setting the retention of",
        key,
        lambda: s.client.put_object_retention(Bucket=s.bucket, Key=name, Retention=retention, **version),
    )


def delete_versions(s: S3Like, name: str, key: str) -> None:
    """Delete every version and delete marker of object ``name``.

    Raises ObjectLocked when a version is under retention (it stays, readable), StorageError otherwise.
    """
    markers: dict[str, str] = {}
    while True:
        list_page = partial(s.client.list_object_versions, Bucket=s.bucket, Prefix=name, **markers)
        page = s._call("listing versions of", key, list_page)
        for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if item["Key"] == name:
                _delete_version(s, name, key, item["VersionId"])
        if not page.get("IsTruncated"):
            return
        markers = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}


def _delete_version(s: S3Like, name: str, key: str, version: str) -> None:
    try:
        s.retry.call(lambda: s.client.delete_object(Bucket=s.bucket, Key=name, VersionId=version), "deleting", key)
    except OpskitError:
        raise
    except Exception as exc:
        # S3 answers a locked version with a bare 403: its retention says whether that is the lock.
        until = _retention_of(s, name, version) if _status(exc) == 403 else None
        if until is not None and until > datetime.now(UTC):
            raise delete_refused(s.name, key, until, "S3 Object Lock") from exc
        raise s._error("deleting", key, exc) from exc


def _retention_of(s: S3Like, name: str, version: str) -> datetime | None:
    try:
        head = s.retry.call(
            lambda: s.client.head_object(Bucket=s.bucket, Key=name, VersionId=version), "checking", name
        )
    except Exception:
        return None
    until = head.get("ObjectLockRetainUntilDate")
    return until if isinstance(until, datetime) else None


def remove_probe(s: S3Like, name: str, version: str | None) -> None:
    """Remove the writability probe ``name`` (its ``version`` where the bucket is versioned).

    On a bucket with Object Lock *default* retention the probe itself is retained and S3 refuses
    the version delete (403): it is hidden behind a delete marker instead (the retained version
    goes with its date), since the probe proved what it had to. Raises the client's exception
    for any other failure (the caller words it).
    """
    if version is None:
        s.client.delete_object(Bucket=s.bucket, Key=name)
        return
    try:
        s.client.delete_object(Bucket=s.bucket, Key=name, VersionId=version)
    except Exception as exc:
        until = _retention_of(s, name, version) if _status(exc) == 403 else None
        if until is None or until <= datetime.now(UTC):
            raise
        s.client.delete_object(Bucket=s.bucket, Key=name)


def retained_until(s: S3Like, name: str, key: str) -> datetime | None:
    """Return the Object Lock retain-until date of the object's current version (None: not locked).

    Raises ObjectNotFound / StorageError.
    """
    head = s._call("checking", key, lambda: s.client.head_object(Bucket=s.bucket, Key=name))
    until = head.get("ObjectLockRetainUntilDate")
    return until if isinstance(until, datetime) else None


def read_lock_state(s: S3Like) -> LockState:
    """Return whether the bucket has Object Lock enabled.

    ``enabled`` is None when the credentials may not read the setting
    (s3:GetBucketObjectLockConfiguration). Raises StorageError for other failures.
    """
    try:
        answer = s.retry.call(
            lambda: s.client.get_object_lock_configuration(Bucket=s.bucket), "reading Object Lock of", "/"
        )
    except OpskitError:
        raise
    except Exception as exc:
        code = _code(exc)
        if code in _NO_LOCK_CODES:
            return LockState(False, f"bucket '{s.bucket}' has no Object Lock", s.immutability)
        if code in _UNREADABLE_CODES or _status(exc) in (403, 405, 501):
            detail = f"bucket '{s.bucket}': its Object Lock setting cannot be read ({code})"
            return LockState(None, detail, s.immutability)
        raise s._error("reading Object Lock of the bucket", None, exc) from exc
    config = answer.get("ObjectLockConfiguration", {})
    enabled = config.get("ObjectLockEnabled") == "Enabled"
    return LockState(enabled, _describe_lock(s.bucket, enabled, config), s.immutability)


def _describe_lock(bucket: str, enabled: bool, config: dict[str, Any]) -> str:
    """Return one line on a bucket's Object Lock: enabled or not, and its default retention."""
    if not enabled:
        return f"bucket '{bucket}' has no Object Lock"
    default = config.get("Rule", {}).get("DefaultRetention", {})
    if not default:
        return f"bucket '{bucket}' has Object Lock enabled (no default retention)"
    period = f"{default['Days']} days" if "Days" in default else f"{default.get('Years')} years"
    return f"bucket '{bucket}' has Object Lock enabled (default retention {default.get('Mode', '').lower()}, {period})"
