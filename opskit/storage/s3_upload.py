"""One S3 object being written as a multipart upload, for :meth:`opskit.storage.s3.S3Storage.writer`.

The upload is created lazily on the first full part (an object smaller than one part is a single
PutObject instead), each part is retried on its own, and the object becomes visible only when
the upload completes; on an error it is aborted, and what an abort leaves behind is swept by
``opskit prune`` (``abort_incomplete_uploads``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Protocol

from opskit.core.errors import StorageError


class UploadTarget(Protocol):
    """What an upload uses of its S3 storage (``opskit.storage.s3.S3Storage``)."""

    bucket: str

    @property
    def client(self) -> Any: ...

    def _call(self, action: str, key: str | None, fn: Callable[[], Any]) -> Any: ...

    def _write_args(self) -> dict[str, Any]: ...


class MultipartUpload:
    """One object being written: created lazily on the first full part, then completed or aborted."""

    def __init__(self, storage: UploadTarget, name: str, key: str, lock: dict[str, Any]) -> None:
        self.storage = storage
        self.name = name
        self.key = key
        self.lock = lock  # ObjectLockMode / ObjectLockRetainUntilDate, or empty
        self.upload_id: str | None = None
        self._lock = threading.Lock()

    def _ensure_started(self) -> str:
        with self._lock:
            if self.upload_id is None:
                s = self.storage
                args = {"Bucket": s.bucket, "Key": self.name, **s._write_args(), **self.lock}
                # A lambda, not a partial: the client is fetched per attempt (it is rebuilt
                # when a bucket turns out to require checksums).
                response = s._call("starting upload of", self.key, lambda: s.client.create_multipart_upload(**args))
                self.upload_id = str(response["UploadId"])
            return self.upload_id

    def upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        """Upload part ``number`` (retried on its own); return what CompleteMultipartUpload needs."""
        upload_id = self._ensure_started()
        s = self.storage
        response = s._call(
            f"uploading part {number} of",
            self.key,
            lambda: s.client.upload_part(
                Bucket=s.bucket, Key=self.name, UploadId=upload_id, PartNumber=number, Body=data
            ),
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def put_whole(self, data: bytes) -> None:
        """Store an object smaller than one part with a single PutObject."""
        s = self.storage
        s._call(
            "uploading",
            self.key,
            lambda: s.client.put_object(Bucket=s.bucket, Key=self.name, Body=data, **s._write_args(), **self.lock),
        )

    def complete(self, parts: list[dict[str, Any]]) -> None:
        """Complete the upload: only now does the object become visible."""
        s = self.storage
        upload_id = self._ensure_started()
        s._call(
            "completing upload of",
            self.key,
            lambda: s.client.complete_multipart_upload(
                Bucket=s.bucket, Key=self.name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            ),
        )

    def abort(self) -> None:
        """Abort the upload so its parts are discarded; failures are left for the prune sweep."""
        if self.upload_id is None:
            return
        s = self.storage
        upload_id = self.upload_id
        # The original error matters more; an upload left behind is swept by `opskit prune`
        # (abort_incomplete_uploads) and is invisible meanwhile.
        with contextlib.suppress(StorageError):
            s._call(
                "aborting upload of",
                self.key,
                lambda: s.client.abort_multipart_upload(Bucket=s.bucket, Key=self.name, UploadId=upload_id),
            )
