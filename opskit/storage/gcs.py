"""Google Cloud Storage (``gs://bucket/prefix``) with google-cloud-storage.

A writer streams a resumable upload (``blob.open("wb")``): each chunk is sent as it
fills, and the upload is finalized only when the ``with`` block exits cleanly, so an
error leaves nothing visible (the upload session is cancelled). The chunk size is the
storage's ``part_size`` (default 16 MiB) rounded up to the 256 KiB multiple GCS requires
(https://cloud.google.com/storage/docs/performing-resumable-uploads#chunked-upload).
GCS has no chunk-count limit, so chunks never grow. An object smaller than one chunk is
stored with a single request.

Credentials: a service-account key given by the ``credentials`` secret reference, else
Application Default Credentials. With an emulator (``endpoint_url`` or
``$STORAGE_EMULATOR_HOST``) and no explicit key, requests are anonymous.

The library's own retries are replaced by :mod:`opskit.storage.retry` (bounded and
logged); inside a resumable upload that policy retries one chunk at a time.

Immutability is the bucket's in GCS: a retention policy (``retentionPolicy.retentionPeriod``,
optionally locked) keeps every object for that long after its creation, and object retention
(``retention.retainUntilTime``) or holds keep single objects. opskit sets nothing per object;
it reads them (:meth:`GCSStorage.lock_state`, :meth:`GCSStorage.retained_until`) so retention
plans and ``status`` know, and a delete GCS refuses (403, retention or hold) is ObjectLocked.
(https://cloud.google.com/storage/docs/bucket-lock)
"""

from __future__ import annotations

import builtins
import contextlib
import http.client
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs  # type: ignore[attr-defined]
from google.cloud.storage.exceptions import InvalidResponse
from google.oauth2 import service_account

from opskit.core.errors import ObjectNotFound, OpskitError, StorageError, UnreachableError
from opskit.core.units import format_span
from opskit.storage.base import (
    CHUNK_SIZE,
    Immutability,
    LockState,
    ObjectInfo,
    Storage,
    delete_refused,
    probe_round_trip,
)
from opskit.storage.cloud import (
    KeySpace,
    MiB,
    PartSchedule,
    PartWriter,
    TiB,
    list_paged,
    resuming_stream,
    split_url,
)
from opskit.storage.retry import TRANSIENT_HTTP_STATUSES, RetryPolicy, max_attempts_option

if TYPE_CHECKING:
    from opskit.storage.base import StorageConfig

DEFAULT_PART_SIZE = 16 * MiB
CHUNK_MULTIPLE = 256 * 1024  # resumable-upload chunks must be multiples of 256 KiB


def _status(exc: BaseException) -> int:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return int(exc.code or 0)
    if isinstance(exc, InvalidResponse) and exc.response is not None:
        return int(getattr(exc.response, "status_code", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """Return True for GCS errors worth retrying: 408/429/5xx, dropped connections, timeouts."""
    if _status(exc) in TRANSIENT_HTTP_STATUSES:
        return True
    if isinstance(exc, auth_exceptions.TransportError):
        # google-auth wraps the transport's exception; retry when that one is transient.
        return bool(exc.args) and isinstance(exc.args[0], BaseException) and is_transient(exc.args[0])
    return isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | http.client.HTTPException
        | ConnectionError
        | TimeoutError,
    )


def chunk_size_for(part_size: int | None) -> int:
    """Return ``part_size`` (default 16 MiB) rounded up to a multiple of 256 KiB."""
    size = part_size or DEFAULT_PART_SIZE
    return max(CHUNK_MULTIPLE, -(-size // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)


class GCSStorage:
    """Objects in a Google Cloud Storage bucket under a prefix."""

    kind = "gs"

    def __init__(self, config: StorageConfig) -> None:
        self.name = config.name
        self.url = config.url
        self.bucket_name, prefix = split_url(config.url, "gs")
        self.keys = KeySpace(prefix)
        self.options = dict(config.options)
        self.endpoint_url: str | None = self.options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST")
        self.retry = RetryPolicy(
            storage=self.name, max_attempts=max_attempts_option(self.options), is_transient=is_transient
        )
        self.chunk_size = chunk_size_for(config.part_size)
        # Resumable chunks are sent one after another; there is no part-count limit to grow for.
        self.schedule = PartSchedule(base=self.chunk_size, max_part=self.chunk_size, max_parts=2**62)
        self.max_object = 5 * TiB
        self.immutability: Immutability | None = None  # GCS retention is the bucket's, nothing to set
        self._lock_state: LockState | None = None
        self._retention_period: int | None = None
        self._client: gcs.Client | None = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> gcs.Client:
        """Return the GCS client, built on first use (secrets are resolved here).

        Raises UnreachableError when the credentials cannot be loaded.
        """
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> gcs.Client:
        project = self.options.get("project") or None
        credentials: Any = None
        ref = self.options.get("credentials")
        try:
            if ref is not None:
                info = json.loads(ref.resolve().reveal())
                credentials = service_account.Credentials.from_service_account_info(
                    info, scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
                )
                project = project or info.get("project_id")
            if self.endpoint_url:
                client = gcs.Client(
                    project=project or "opskit",
                    credentials=credentials or AnonymousCredentials(),
                    client_options={"api_endpoint": self.endpoint_url},
                )
            else:
                client = gcs.Client(project=project, credentials=credentials)
        except OpskitError:
            raise
        except (ValueError, KeyError, TypeError, auth_exceptions.GoogleAuthError) as exc:
            source = "the 'credentials' service-account key" if ref is not None else "Application Default Credentials"
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}): cannot load {source}: {exc}",
                hint="give a valid service-account JSON key as 'credentials', or run "
                "'gcloud auth application-default login' / set GOOGLE_APPLICATION_CREDENTIALS",
            ) from exc
        # google-cloud-storage >= 3.5 fetches bucket metadata in the background for tracing
        # attributes: an extra GET per bucket that needs storage.buckets.get, which a
        # backup-writer role does not have. opskit does not trace through the SDK.
        if getattr(client, "_bucket_metadata_cache", None) is not None:
            client._bucket_metadata_cache = None
        return client

    def _call(self, action: str, key: str | None, fn: Callable[[], Any]) -> Any:
        """Run one request with retries and translate the final error. Returns fn's result."""
        try:
            return self.retry.call(fn, action, key)
        except OpskitError:
            raise
        except Exception as exc:
            raise self._error(action, key, exc) from exc

    def _error(self, action: str, key: str | None, exc: BaseException) -> StorageError:
        """Return the opskit error for a request that failed while a run is under way."""
        # Uploads and listings can only 404 because the bucket is missing; reads and
        # deletes 404 for a missing object unless the message says it is the bucket.
        bucket_missing = action.startswith(("uploading", "finishing", "listing")) or _bucket_missing(exc)
        if _status(exc) == 404 and key and not bucket_missing:
            return ObjectNotFound(f"storage '{self.name}' has no object '{key}'")
        what = f"{action} '{key}'" if key else action
        return StorageError(
            f"storage '{self.name}' ({self.url}): {what} failed: {self._describe(exc, bucket_missing)}",
            hint=self._hint(exc, bucket_missing),
            bucket_missing=bucket_missing and _status(exc) == 404,
            # core/errors.py's rule: a store that cannot be reached or refuses us exits 3 in any verb.
            unreachable=_status(exc) in (401, 403)
            or isinstance(exc, auth_exceptions.RefreshError | requests.ConnectionError),
        )

    def _media_retry(self, key: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
        """Return a retry strategy for google-cloud-storage's upload internals.

        The library calls ``strategy(request)()`` for each chunk it sends; ours retries that
        one request with the shared policy (bounded, logged), which is what makes a chunk
        retry self-contained.
        """

        def strategy(request: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: self.retry.call(request, "uploading chunk of", key)

        return strategy

    # ------------------------------------------------------------------ writing

    @contextmanager
    def writer(self, key: str, *, immutable: bool = False) -> Iterator[BinaryIO]:
        """Yield a stream that uploads ``key`` as a resumable upload; finalize on clean exit.

        ``immutable`` is accepted and has no effect here: GCS retention is the bucket's
        retention policy, which applies to every object (see :meth:`lock_state`).

        On an exception the upload session is cancelled and nothing is visible. Raises
        StorageError when a chunk or the finalization fails (after retries).
        """
        name = self.keys.full(key)
        blob = self.client.bucket(self.bucket_name).blob(name, chunk_size=self.chunk_size)
        upload: Any = None

        def upload_chunk(_number: int, data: bytes) -> None:
            nonlocal upload
            try:
                if upload is None:
                    upload = blob.open(
                        "wb", chunk_size=self.chunk_size, ignore_flush=True, retry=self._media_retry(key)
                    )
                upload.write(data)
            except OpskitError:
                raise
            except Exception as exc:
                raise self._error("uploading", key, exc) from exc

        def upload_whole(data: bytes) -> None:
            self._call("uploading", key, lambda: blob.upload_from_string(data, retry=None))

        # One chunk in flight: GCS takes a resumable upload's chunks in order, and one is
        # enough to keep pg_dump and zstd busy while it is on the wire.
        parts: PartWriter[None] = PartWriter(self.schedule, upload_chunk, upload_whole, in_flight=1)
        try:
            yield cast(BinaryIO, parts)
            parts.finish()
            if upload is not None:
                # Sends the last (short) chunk: only now does the object become visible.
                self._call("finishing upload of", key, upload.close)
        except BaseException:
            parts.cancel()
            self._abort(upload, blob, key)
            raise

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless an object is there; return False when one was.

        A single upload with ``ifGenerationMatch=0``, which GCS refuses with 412 when any live
        generation of the object exists
        (https://cloud.google.com/storage/docs/request-preconditions). Raises StorageError.
        """
        blob = self.client.bucket(self.bucket_name).blob(self.keys.full(key))
        try:
            self.retry.call(lambda: blob.upload_from_string(data, if_generation_match=0, retry=None), "creating", key)
        except OpskitError:
            raise
        except Exception as exc:
            if _status(exc) == 412:
                return False
            raise self._error("uploading", key, exc) from exc
        return True

    def _abort(self, upload: Any, blob: gcs.Blob, key: str) -> None:
        """Cancel an unfinished resumable upload; delete the object if it was finalized anyway."""
        if upload is None:
            return
        state = getattr(upload, "_upload_and_transport", None)
        finished = bool(state and getattr(state[0], "finished", False))
        with contextlib.suppress(Exception):
            if finished:
                # The final chunk reached GCS but the run failed afterwards: the object must not stay.
                blob.delete(retry=None)
            else:
                upload.terminate()

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """Yield a stream of the object's bytes (``blob.open("rb")``, ranged reads, resumable).

        Raises ObjectNotFound when there is no such object, StorageError otherwise.
        """
        name = self.keys.full(key)
        blob = self.client.bucket(self.bucket_name).blob(name)
        self._call("reading", key, lambda: blob.reload(retry=None))
        size = int(blob.size or 0)

        def open_at(offset: int) -> Iterator[bytes]:
            stream = blob.open("rb", chunk_size=max(CHUNK_SIZE, self.chunk_size), retry=None)
            if offset:
                stream.seek(offset)
            return _chunks(stream, size - offset)

        with resuming_stream(open_at, self.retry, lambda exc: self._error("reading", key, exc), key) as stream:
            yield stream

    # ------------------------------------------------------------------ listing, deleting

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, one retried request per page."""
        list_prefix = self.keys.list_prefix(prefix)
        yield from list_paged(
            self.keys, lambda token: self._call("listing", prefix or "/", partial(self._list_page, list_prefix, token))
        )

    def _list_page(self, list_prefix: str, token: str | None) -> tuple[builtins.list[tuple[str, int, Any]], str | None]:
        iterator = self.client.list_blobs(
            self.bucket_name, prefix=list_prefix, page_token=token, page_size=1000, retry=None
        )
        page = next(iterator.pages, None)
        items = [(b.name, int(b.size or 0), b.updated) for b in page] if page is not None else []
        return items, iterator.next_page_token

    def delete(self, key: str) -> None:
        """Delete the object; a missing object is not an error.

        Raises ObjectLocked when GCS refuses because of a retention policy, object retention
        or a hold; StorageError otherwise.
        """
        name = self.keys.full(key)
        blob = self.client.bucket(self.bucket_name).blob(name)
        try:
            with contextlib.suppress(ObjectNotFound):
                self._call("deleting", key, lambda: blob.delete(retry=None))
        except StorageError as exc:
            cause = exc.__cause__
            if cause is not None and _status(cause) == 403 and ("retention" in str(cause) or "hold" in str(cause)):
                until = self.retained_until(key)
                raise delete_refused(self.name, key, until, "GCS retention") from exc
            raise

    # ------------------------------------------------------------------ immutability

    def lock_state(self) -> LockState:
        """Return whether the bucket keeps objects under retention (asked once per storage object).

        ``enabled`` is None when the credentials may not read the bucket (storage.buckets.get).
        Raises StorageError for other failures.
        """
        if self._lock_state is not None:
            return self._lock_state
        bucket = self.client.bucket(self.bucket_name)
        try:
            self.retry.call(lambda: bucket.reload(retry=None), "reading the retention policy of", "/")
        except OpskitError:
            raise
        except Exception as exc:
            if _status(exc) not in (401, 403):
                raise self._error("reading the retention policy of the bucket", None, exc) from exc
            self._lock_state = LockState(None, f"bucket '{self.bucket_name}': its retention policy cannot be read")
            return self._lock_state
        period = int(bucket.retention_period or 0)
        object_retention = getattr(bucket, "object_retention_mode", None) == "Enabled"
        if period:
            locked = " (locked)" if bucket.retention_policy_locked else " (not locked: an owner may remove it)"
            detail = f"bucket '{self.bucket_name}' has a retention policy of {format_span(timedelta(seconds=period))}"
            detail += locked
        elif object_retention:
            detail = f"bucket '{self.bucket_name}' has object retention enabled (no bucket retention policy)"
        else:
            detail = f"bucket '{self.bucket_name}' has no retention policy"
        self._retention_period = period or None
        self._lock_state = LockState(bool(period) or object_retention, detail)
        return self._lock_state

    def retained_until(self, key: str) -> datetime | None:
        """Return when ``key``'s retention ends: the latest of its object retention and the bucket policy.

        The bucket policy's end is the object's ``retentionExpirationTime``, or its creation
        time plus the period when the server does not send that field (the emulator).
        Raises ObjectNotFound / StorageError.
        """
        state = self.lock_state()
        blob = self.client.bucket(self.bucket_name).blob(self.keys.full(key))
        self._call("checking", key, lambda: blob.reload(retry=None))
        dates = [blob.retention_expiration_time, getattr(blob.retention, "retain_until_time", None)]
        if dates[0] is None and state.enabled and self._retention_period and blob.time_created:
            dates[0] = blob.time_created + timedelta(seconds=self._retention_period)
        found = [d for d in dates if isinstance(d, datetime)]
        return max(found) if found else None

    def exists(self, key: str) -> bool:
        """Return True when ``key`` exists."""
        name = self.keys.full(key)
        blob = self.client.bucket(self.bucket_name).blob(name)
        return bool(self._call("checking", key, lambda: blob.exists(retry=None)))

    # ------------------------------------------------------------------ probing

    def check_writable(self) -> None:
        """Write, read back and delete a probe object under the prefix.

        Raises UnreachableError naming the storage and the cause: missing bucket, bad or
        missing credentials, permission denied, no route to the endpoint.
        """
        try:
            probe_round_trip(self)
        except UnreachableError:
            raise
        except StorageError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            missing = exc.bucket_missing
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}): {self._describe(cause, missing)}",
                hint=self._hint(cause, missing),
            ) from exc

    # ------------------------------------------------------------------ optional capabilities

    def copy_from(self, source: Storage, key: str) -> bool:
        """Copy ``key`` from another GCS storage server-side (objects.rewrite); False when not possible.

        Possible when ``source`` is a GCS storage on the same endpoint and these credentials
        can read it. Large objects take several rewrite calls, each retried on its own.
        Raises ObjectNotFound / StorageError.
        """
        if not isinstance(source, GCSStorage) or source.endpoint_url != self.endpoint_url:
            return False
        src = self.client.bucket(source.bucket_name).blob(source.keys.full(key))
        dst = self.client.bucket(self.bucket_name).blob(self.keys.full(key))
        token: str | None = None
        while True:
            token, _done, _total = self._call("copying", key, partial(dst.rewrite, src, token=token, retry=None))
            if token is None:
                return True

    # ------------------------------------------------------------------ messages

    def _describe(self, exc: BaseException, bucket_missing: bool = False) -> str:
        status = _status(exc)
        if status == 404 and bucket_missing:
            return f"bucket '{self.bucket_name}' does not exist"
        if status == 401:
            return "the credentials were rejected (bad credentials)"
        if status == 403:
            return f"access denied to bucket '{self.bucket_name}' (a read-only credential, or missing IAM role)"
        if isinstance(exc, auth_exceptions.RefreshError):
            return f"the credentials could not be refreshed (bad credentials): {exc}"
        if isinstance(exc, requests.ConnectionError):
            return f"cannot connect to {self.endpoint_url or 'storage.googleapis.com'}"
        if isinstance(exc, OpskitError):
            return exc.message
        return f"{type(exc).__name__}: {exc}"

    def _hint(self, exc: BaseException, bucket_missing: bool = False) -> str | None:
        status = _status(exc)
        if status == 404 and bucket_missing:
            return "create the bucket (opskit never creates buckets) or fix the storage URL"
        if status == 401 or isinstance(exc, auth_exceptions.RefreshError):
            return "check the 'credentials' key or Application Default Credentials"
        if status == 403:
            return "grant roles/storage.objectAdmin (or objectCreator + objectViewer + delete) on the bucket"
        if isinstance(exc, requests.ConnectionError):
            return "check endpoint_url / STORAGE_EMULATOR_HOST and the network"
        return None


def _bucket_missing(exc: BaseException) -> bool:
    """Return True when a 404 is about the bucket rather than the object."""
    text = str(exc).lower()
    if isinstance(exc, InvalidResponse) and exc.response is not None:
        text += " " + str(getattr(exc.response, "text", "")).lower()
    return "bucket" in text and ("not exist" in text or "not found" in text)


def _chunks(stream: Any, remaining: int) -> Iterator[bytes]:
    """Yield the stream's bytes in CHUNK_SIZE pieces until ``remaining`` bytes were read."""
    try:
        while remaining > 0:
            data = stream.read(min(CHUNK_SIZE, remaining))
            if not data:
                raise StorageError(f"object ended {remaining} bytes early")
            remaining -= len(data)
            yield data
    finally:
        stream.close()


def open_storage(config: StorageConfig) -> GCSStorage:
    """Return the GCS storage a ``gs://`` config names. Does no I/O."""
    return GCSStorage(config)
