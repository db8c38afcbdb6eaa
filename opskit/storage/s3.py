"""Amazon S3 and S3-compatible storage (``s3://bucket/prefix``) with boto3.

A writer streams a multipart upload (:mod:`opskit.storage.s3_upload`): parts are cut from the
writes as they arrive (see :class:`opskit.storage.cloud.PartWriter`), the upload is completed
on a clean exit and aborted on an exception, so a failed backup leaves no object behind. An
object smaller than one part is stored with a single PutObject. Parts start at ``part_size`` (default
8 MiB, the AWS CLI's and boto3's own ``multipart_chunksize``) and double every 900 parts so a 5 TiB
object stays under S3's 10,000-part limit
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).

boto3's own retries are switched off; every request is retried by
:mod:`opskit.storage.retry` so that retries are bounded, logged, and per part.
Which errors are transient, and how the others read, is :mod:`opskit.storage.s3_errors`.
Buckets are never created: a missing bucket is an error for the operator to fix.

Immutability (the ``immutable = { mode, days }`` option): every write with ``immutable=True``
(backup artifacts and manifests; never locks, pins or verification records, which opskit
rewrites and removes) carries S3 Object Lock retention, checked before the writer returns. On
a bucket with Object Lock ``delete`` removes the key's versions. See :mod:`opskit.storage.s3_lock`.
"""

from __future__ import annotations

import builtins
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

import boto3
import botocore.exceptions as bex
from botocore.config import Config as BotoConfig

from opskit.core.errors import (
    ConfigError,
    ObjectNotFound,
    OpskitError,
    StorageError,
    UnreachableError,
)
from opskit.core.log import get_logger
from opskit.storage import s3_errors, s3_lock
from opskit.storage.base import CHUNK_SIZE, Immutability, LockState, ObjectInfo, Storage
from opskit.storage.cloud import KeySpace, MiB, PartSchedule, PartWriter, resuming_stream, split_url
from opskit.storage.retry import RetryPolicy, max_attempts_option
from opskit.storage.s3_upload import MultipartUpload

if TYPE_CHECKING:
    from opskit.storage.base import StorageConfig

T = TypeVar("T")

log = get_logger(__name__)

# Two parts upload while a third fills, so the part size sets most of what a backup holds in
# memory: 8 MiB keeps that at ~32 MiB (16 MiB parts held twice that, measured in
# docs/benchmarks.md) and still fills two connections faster than zstd produces bytes on 2 cores.
DEFAULT_PART_SIZE = 8 * MiB
# S3 rejects non-final parts under 5 MiB (EntityTooSmall). Smaller parts are honoured only
# with a custom endpoint_url, for test servers and stores without that limit.
MIN_PART_SIZE = 5 * MiB


class S3Storage:
    """Objects in an S3 bucket under a prefix."""

    kind = "s3"

    def __init__(self, config: StorageConfig) -> None:
        self.name = config.name
        self.url = config.url
        self.bucket, prefix = split_url(config.url, "s3")
        self.keys = KeySpace(prefix)
        self.options = dict(config.options)
        self.endpoint_url: str | None = self.options.get("endpoint_url") or None
        self.retry = RetryPolicy(
            storage=self.name, max_attempts=max_attempts_option(self.options), is_transient=s3_errors.is_transient
        )
        self.schedule = PartSchedule(base=self._part_size(config.part_size))
        immutable = self.options.get("immutable")
        self.immutability: Immutability | None = immutable if isinstance(immutable, Immutability) else None
        self._lock_state: LockState | None = None
        # boto3's checksums are off for a custom endpoint (see _build_client) until a bucket
        # refuses a write without one (_checksum_fallback); on AWS and with Object Lock, always on.
        self._checksums_configured = self.endpoint_url is None or self.immutability is not None
        self._checksums = self._checksums_configured
        self._client: Any = None
        self._client_lock = threading.Lock()

    def _part_size(self, configured: int | None) -> int:
        size = configured or DEFAULT_PART_SIZE
        if size < MIN_PART_SIZE and not self.endpoint_url:
            return MIN_PART_SIZE
        return size

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> Any:
        """Return the boto3 S3 client, built on first use (secrets are resolved here, not earlier).

        Raises ConfigError for an unknown profile or a bad option.
        """
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client(checksums=self._checksums)
            return self._client

    def _checksum_fallback(self, fn: Callable[[], T]) -> T:
        """Return ``fn()``; when the store refused it for want of a checksum, send checksums from now on and run it again.

        A bucket with Object Lock *default* retention locks every new object, and S3 refuses a
        write of a retained object without a Content-MD5 or checksum header
        (MissingUploadObjectWithObjectLockHeaders): on a custom endpoint without ``immutable``,
        where checksums start off, every write would fail. A store that has Object Lock takes
        checksums; asking each bucket for its setting up front would cost every other store a
        request. ``fn`` must fetch ``self.client`` when called. Raises what ``fn`` raises.
        """
        try:
            return fn()
        except Exception as exc:
            if self._checksums_configured or not s3_errors.checksum_required(exc):
                raise
            with self._client_lock:
                if not self._checksums:
                    self._checksums = True
                    self._client = None  # rebuilt with checksums by the next access
                    log.info("the bucket requires a checksum on every write: sending them", storage=self.name)
            return fn()

    def _build_client(self, *, checksums: bool) -> Any:
        opts = self.options
        session_args: dict[str, Any] = {}
        if opts.get("profile"):
            session_args["profile_name"] = opts["profile"]
        for option, arg in (
            ("access_key_id", "aws_access_key_id"),
            ("secret_access_key", "aws_secret_access_key"),
            ("session_token", "aws_session_token"),
        ):
            if opts.get(option) is not None:
                session_args[arg] = opts[option].resolve().reveal()
        config_args: dict[str, Any] = {
            # One attempt per boto3 call: opskit.storage.retry does the retrying, logged and per part.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 120,
            "max_pool_connections": 16,
        }
        if opts.get("path_style"):
            config_args["s3"] = {"addressing_style": "path"}
        if not checksums:
            # Stores other than AWS (older MinIO and Ceph releases) reject the CRC checksums
            # boto3 >= 1.36 sends by default; opskit checks sha256 end to end anyway. Not with
            # Object Lock (``immutable``, or a default retention): S3 requires a
            # checksum on every write that carries a retention, a default one included: a
            # bucket that refuses a write for want of one turns them on (_checksum_fallback).
            config_args["request_checksum_calculation"] = "when_required"
            config_args["response_checksum_validation"] = "when_required"
        try:
            session = boto3.session.Session(**session_args)
            return session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=opts.get("region") or None,
                config=BotoConfig(**config_args),
            )
        except bex.ProfileNotFound as exc:
            raise ConfigError(
                f"storage '{self.name}': AWS profile '{opts.get('profile')}' is not configured",
                hint="add it to ~/.aws/config or remove the 'profile' option",
            ) from exc
        except (bex.BotoCoreError, ValueError) as exc:
            raise ConfigError(f"storage '{self.name}': cannot create an S3 client: {exc}") from exc

    def _call(self, action: str, key: str | None, fn: Callable[[], Any]) -> Any:
        """Run one S3 request with retries; translate the final error. Returns the request's result."""
        try:
            return self._checksum_fallback(lambda: self.retry.call(fn, action, key))
        except OpskitError:
            raise
        except Exception as exc:
            raise self._error(action, key, exc) from exc

    def _error(self, action: str, key: str | None, exc: BaseException) -> StorageError:
        """Return the opskit error for a failed request made while a run is under way."""
        what = f"{action} '{key}'" if key else action
        if s3_errors.error_code(exc) in s3_errors.NOT_FOUND_CODES and key:
            return ObjectNotFound(f"storage '{self.name}' has no object '{key}'")
        cause = s3_errors.describe(exc, self.bucket)
        hint = s3_errors.hint(exc) or "check the store's health and run again"
        if action.startswith(("starting upload", "uploading", "completing", "writing", "putting")):
            hint = f"nothing was committed; {hint}"
        return StorageError(
            f"storage '{self.name}' ({self.url}): {what} failed {self.retry.attempts_made(exc)}: {cause}",
            hint=hint,
            unreachable=s3_errors.refused(exc),
        )

    def _write_args(self) -> dict[str, Any]:
        """Return the SSE and storage-class arguments every object write carries."""
        args: dict[str, Any] = {}
        if self.options.get("sse"):
            args["ServerSideEncryption"] = self.options["sse"]
        if self.options.get("sse_kms_key_id"):
            args["SSEKMSKeyId"] = self.options["sse_kms_key_id"]
        if self.options.get("storage_class"):
            args["StorageClass"] = self.options["storage_class"]
        return args

    def _lock_args(self, immutable: bool) -> dict[str, Any]:
        """Return the Object Lock arguments of a write (see :func:`opskit.storage.s3_lock.lock_args`)."""
        return s3_lock.lock_args(self, immutable)

    def _ensure_retained(self, name: str, key: str, lock: dict[str, Any]) -> None:
        """Check the object got its retention, setting it when missing. Raises StorageError."""
        s3_lock.ensure_retained(self, name, key, lock)

    # ------------------------------------------------------------------ writing

    @contextmanager
    def writer(self, key: str, *, immutable: bool = False) -> Iterator[BinaryIO]:
        """Yield a stream that uploads ``key`` in parts; complete on clean exit, abort on error.

        With ``immutable`` on a storage configured so, the object is stored under Object Lock
        retention. Raises StorageError when a part or the completion fails (after retries).
        """
        name = self.keys.full(key)
        lock = self._lock_args(immutable)
        upload = MultipartUpload(self, name, key, lock)
        parts: PartWriter[dict[str, Any]] = PartWriter(self.schedule, upload.upload_part, upload.put_whole)
        try:
            yield cast(BinaryIO, parts)
            results = parts.finish()
            if results:
                upload.complete(results)
        except BaseException:
            parts.cancel()
            upload.abort()
            raise
        self._ensure_retained(name, key, lock)

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless an object is there; return False when one was.

        A PutObject with ``If-None-Match: *``: S3 answers 412 PreconditionFailed when the key
        exists, and 409 ConditionalRequestConflict when another conditional write to it is in
        flight (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html);
        both mean someone else got there first. Raises StorageError.
        """
        name = self.keys.full(key)
        try:
            self._checksum_fallback(
                lambda: self.retry.call(
                    lambda: self.client.put_object(
                        Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*", **self._write_args()
                    ),
                    "creating",
                    key,
                )
            )
        except OpskitError:
            raise
        except Exception as exc:
            if s3_errors.http_status(exc) in (409, 412) or s3_errors.error_code(exc) in {
                "PreconditionFailed",
                "ConditionalRequestConflict",
            }:
                return False
            raise self._error("creating", key, exc) from exc
        return True

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """Yield a stream of the object's bytes, downloaded in chunks (resumed after a transient error).

        Raises ObjectNotFound when there is no such object, StorageError otherwise.
        """
        name = self.keys.full(key)

        def open_at(offset: int) -> Iterator[bytes]:
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
            if offset:
                args["Range"] = f"bytes={offset}-"
            body = self.client.get_object(**args)["Body"]
            return cast(Iterator[bytes], body.iter_chunks(CHUNK_SIZE))

        with resuming_stream(open_at, self.retry, lambda exc: self._error("reading", key, exc), key) as stream:
            yield stream

    # ------------------------------------------------------------------ listing, deleting

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, page by page (ListObjectsV2)."""
        list_prefix = self.keys.list_prefix(prefix)
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": list_prefix, "MaxKeys": 1000}
            if token:
                args["ContinuationToken"] = token
            # One page per retried request: a failure on page 7 does not re-list pages 1-6.
            page = self._call("listing", prefix or "/", partial(self.client.list_objects_v2, **args))
            for item in page.get("Contents", []):
                rel = self.keys.relative(item["Key"])
                if rel:
                    yield ObjectInfo(rel, int(item["Size"]), item["LastModified"])
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error (S3 DeleteObject is idempotent).

        On a bucket with Object Lock every version of the key is deleted (a plain delete would
        only hide it behind a delete marker). Raises ObjectLocked when a version is still
        under retention (that version stays, readable), StorageError otherwise.
        """
        name = self.keys.full(key)
        if self.lock_state().enabled:
            s3_lock.delete_versions(self, name, key)
            return
        self._call("deleting", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))

    def hide(self, key: str) -> None:
        """Hide ``key`` behind a delete marker: a DeleteObject without a version id.

        On a bucket with Object Lock (always versioned) S3 accepts it even when every version is
        under retention, and the key no longer lists or exists; the retained versions stay until
        their date. On a bucket without versioning it is a plain delete. Raises StorageError.
        """
        name = self.keys.full(key)
        self._call("hiding", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))

    # ------------------------------------------------------------------ immutability

    def lock_state(self) -> LockState:
        """Return whether the bucket has Object Lock enabled (asked once per storage object).

        ``enabled`` is None when the credentials may not read it. Raises StorageError.
        """
        if self._lock_state is None:
            self._lock_state = s3_lock.read_lock_state(self)
        return self._lock_state

    def retained_until(self, key: str) -> datetime | None:
        """Return the Object Lock retain-until date of ``key`` (None: not locked). Raises StorageError."""
        return s3_lock.retained_until(self, self.keys.full(key), key)

    def exists(self, key: str) -> bool:
        """Return True when ``key`` exists (HeadObject)."""
        name = self.keys.full(key)
        try:
            self._call("checking", key, lambda: self.client.head_object(Bucket=self.bucket, Key=name))
        except ObjectNotFound:
            return False
        return True

    # ------------------------------------------------------------------ probing

    def check_writable(self) -> None:
        """Write, read back and delete a probe object under the prefix.

        Raises UnreachableError naming the storage and the cause: missing bucket, unknown
        access key, wrong secret, access denied (e.g. a read-only credential), no route
        to the endpoint; ConfigError when ``immutable`` is set on a bucket without Object
        Lock (every backup would fail at its first upload, after pg_dump started).
        """
        probe = self.keys.full(f".opskit-probe-{secrets.token_hex(6)}")
        try:
            put = self._checksum_fallback(
                lambda: self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe", **self._write_args())
            )
            self.client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
            # On a versioned bucket (any with Object Lock) delete the version itself: a plain
            # delete would leave the probe's bytes behind a delete marker on every check.
            s3_lock.remove_probe(self, probe, put.get("VersionId"))
        except ConfigError:
            raise
        except Exception as exc:
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}): {s3_errors.describe(exc, self.bucket)}", hint=s3_errors.hint(exc)
            ) from exc
        if self.immutability is not None and self.lock_state().enabled is False:
            raise ConfigError(
                f"storage '{self.name}' ({self.url}) has 'immutable' set, but {self.lock_state().detail}",
                hint="enable Object Lock on the bucket (versioning on, then put-object-lock-configuration) "
                "or remove the storage's 'immutable' option",
            )

    # ------------------------------------------------------------------ optional capabilities

    def copy_from(self, source: Storage, key: str) -> bool:
        """Copy ``key`` from another S3 storage server-side; return False when that is not possible.

        Possible when ``source`` is an S3 storage on the same endpoint (and, for AWS, the
        credentials here can read the source bucket). Raises ObjectNotFound / StorageError.
        """
        if not isinstance(source, S3Storage) or source.endpoint_url != self.endpoint_url:
            return False
        src = {"Bucket": source.bucket, "Key": source.keys.full(key)}
        dst = self.keys.full(key)
        # client.copy is the managed transfer: it switches to UploadPartCopy above 8 MiB,
        # which S3 requires for objects over 5 GiB. Only artifacts are copied this way, so the
        # copy gets this storage's retention: set by PutObjectRetention right after the copy,
        # since a copy with the lock headers needs a checksum header the managed copy cannot
        # send on every store (moto: MissingUploadObjectWithObjectLockHeaders).
        lock = self._lock_args(immutable=True)
        extra = self._write_args()
        self._call(
            "copying",
            key,
            lambda: self.client.copy(src, self.bucket, dst, ExtraArgs=extra or None),
        )
        self._ensure_retained(dst, key, lock)
        return True

    def abort_incomplete_uploads(self, prefix: str, older_than: datetime, dry_run: bool) -> builtins.list[str]:
        """Abort multipart uploads under ``prefix`` initiated before ``older_than``; return their keys.

        With ``dry_run`` nothing is aborted. Raises StorageError.
        """
        list_prefix = self.keys.list_prefix(prefix)
        aborted: builtins.list[str] = []
        markers: dict[str, str] = {}
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": list_prefix, **markers}
            list_page = partial(self.client.list_multipart_uploads, **args)
            page = self._call("listing uploads", prefix or "/", list_page)
            for upload in page.get("Uploads", []):
                rel = self.keys.relative(upload["Key"])
                if rel is None or upload["Initiated"] >= older_than:
                    continue
                if not dry_run:
                    abort = partial(
                        self.client.abort_multipart_upload,
                        Bucket=self.bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    self._call("aborting upload", rel, abort)
                aborted.append(rel)
            if not page.get("IsTruncated"):
                return aborted
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}


def open_storage(config: StorageConfig) -> S3Storage:
    """Return the S3 storage a ``s3://`` config names. Does no I/O."""
    return S3Storage(config)
