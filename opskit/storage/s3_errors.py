"""How S3 failures read to opskit: which are worth retrying, and the cause, hint and exit class of the rest.

:mod:`opskit.storage.s3` (and :mod:`opskit.storage.s3_lock`) turn a botocore error into an
opskit error with these: :func:`is_transient` feeds :mod:`opskit.storage.retry` (5xx,
throttling, timeouts, dropped connections); :func:`describe` and :func:`hint` name the cause and
the fix (a missing bucket, bad credentials, access denied, no route); :func:`refused` says
whether the store could not be reached or refused us (exit 3).
"""

from __future__ import annotations

import botocore.exceptions as bex

from opskit.storage.retry import TRANSIENT_HTTP_STATUSES

_TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "503",
        "500",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# A write refused for want of a Content-MD5 or checksum header, which S3 requires of every
# object under Object Lock retention, a bucket's default retention included: moto's code,
# MinIO's, and AWS's InvalidRequest naming the header.
_CHECKSUM_REQUIRED_CODES = frozenset({"MissingUploadObjectWithObjectLockHeaders", "MissingContentMD5"})


def checksum_required(exc: BaseException) -> bool:
    """Return True when the store refused a write because it carried no Content-MD5 or checksum header."""
    code = error_code(exc)
    if code in _CHECKSUM_REQUIRED_CODES:
        return True
    return code == "InvalidRequest" and "Content-MD5" in str(exc)


def error_code(exc: BaseException) -> str:
    """Return the S3 error code of ``exc`` (``NoSuchBucket``, ``SlowDown``, ...), or "" for a non-S3 error."""
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    """Return the HTTP status of an S3 error response, or 0."""
    if isinstance(exc, bex.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """Return True for S3 errors worth retrying: 5xx, throttling, timeouts, dropped connections."""
    if isinstance(exc, bex.ClientError):
        return http_status(exc) in TRANSIENT_HTTP_STATUSES or error_code(exc) in _TRANSIENT_CODES
    return isinstance(
        exc,
        bex.ConnectionError | bex.HTTPClientError | bex.IncompleteReadError | ConnectionError | TimeoutError,
    )


def describe(exc: BaseException, bucket: str) -> str:
    """Return a short cause for an S3 failure, naming the bucket where that helps."""
    code = error_code(exc)
    status = http_status(exc)
    if code == "NoSuchBucket":
        return f"bucket '{bucket}' does not exist"
    if checksum_required(exc):
        # Shown only once opskit has sent its checksum (see S3Storage._checksum_fallback).
        return (
            f"bucket '{bucket}' requires a Content-MD5 or checksum header on every write (Object Lock "
            f"default retention) and did not take opskit's CRC32 checksum ({code})"
        )
    if code == "InvalidAccessKeyId":
        return "the access key id is not known to the server (bad credentials)"
    if code == "SignatureDoesNotMatch":
        return "the secret access key does not match the access key id (bad credentials)"
    if code in {"ExpiredToken", "InvalidToken", "TokenRefreshRequired"}:
        return "the session token is expired or invalid"
    if code in {"AccessDenied", "AllAccessDisabled"} or status == 403:
        return f"access denied to bucket '{bucket}' (a read-only credential, or a policy that denies it)"
    if isinstance(exc, bex.NoCredentialsError):
        return "no AWS credentials were found"
    if isinstance(exc, bex.EndpointConnectionError):
        return f"cannot connect to {exc.kwargs.get('endpoint_url', 'the endpoint')}"
    if isinstance(exc, bex.ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        return f"{code or status}: {message}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def refused(exc: BaseException) -> bool:
    """Return True when the store could not be reached or refused us (exit 3, core/errors.py's rule)."""
    code = error_code(exc)
    refused_codes = {"NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
    if code in refused_codes or code in {"AccessDenied", "AllAccessDisabled"} or http_status(exc) == 403:
        return True
    if checksum_required(exc):
        return True  # the store refuses every write of this configuration: fix it, as a bad credential

    return isinstance(exc, bex.NoCredentialsError | bex.EndpointConnectionError)


def hint(exc: BaseException) -> str | None:
    """Return how to fix the cause of an S3 failure, when opskit knows one."""
    code = error_code(exc)
    if code == "NoSuchBucket":
        return "create the bucket (opskit never creates buckets) or fix the storage URL"
    if checksum_required(exc):
        return (
            "a store with Object Lock must accept x-amz-checksum headers (older MinIO and Ceph releases "
            "take only Content-MD5, which opskit does not send): upgrade the store, or remove the bucket's "
            "default retention and set the storage's 'immutable' option"
        )
    if code == "InvalidRequest" and "ObjectLock" in str(exc):
        return (
            "the bucket has no Object Lock: enable it on the bucket (versioning on, then "
            "put-object-lock-configuration) or remove the storage's 'immutable' option"
        )
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"} or isinstance(
        exc, bex.NoCredentialsError
    ):
        return "check access_key_id/secret_access_key, the profile, or the AWS_* environment"
    if code in {"AccessDenied", "AllAccessDisabled"} or http_status(exc) == 403:
        return "grant s3:PutObject, s3:GetObject, s3:DeleteObject and s3:ListBucket on the bucket and prefix"
    if isinstance(exc, bex.ConnectionError | bex.HTTPClientError):
        return "check endpoint_url, region and the network path to the store"
    return None
