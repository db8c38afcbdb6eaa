"""Azure Blob Storage (``az://container/prefix``) with azure-storage-blob.

A writer stages each part as a block (Put Block) while the stream is written, and commits
the block list (Put Block List) only when the ``with`` block exits cleanly. Staged but
uncommitted blocks are invisible and Azure garbage-collects them after a week
(https://learn.microsoft.com/rest/api/storageservices/put-block#remarks), so an error
leaves nothing visible and needs no clean-up call. An object smaller than one part is
stored with a single Put Blob. A blob holds at most 50,000 blocks: parts start at
``part_size`` (default 16 MiB) and double every 2,500 blocks.

Authentication, in order: ``connection_string``; ``account_url`` (or ``account_name``)
with ``account_key`` or ``sas_token``; else ``DefaultAzureCredential`` when
azure-identity is installed. The SDK's retry policy is switched off; requests are
retried by :mod:`opskit.storage.retry`, one block or one page at a time.

Immutability is the container's in Azure: a time-based retention policy or version-level
immutability (WORM) is set by the account's owner, never by opskit. opskit reads it
(:meth:`AzureStorage.lock_state`, and a blob's ``immutability_policy`` expiry in
:meth:`AzureStorage.retained_until`) so retention plans and ``status`` know, and a delete
Azure refuses for it (409 BlobImmutableDueToPolicy / a legal hold) is ObjectLocked.
Azurite does not implement immutability (its handlers answer NotImplemented), so only the
"not immutable" answers are exercised against a real server here.
(https://learn.microsoft.com/azure/storage/blobs/immutable-storage-overview)
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from azure.core import MatchConditions
from azure.core import exceptions as az_exceptions
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient

from opskit.core.errors import ConfigError, ObjectNotFound, OpskitError, StorageError, UnreachableError
from opskit.storage.base import Immutability, LockState, ObjectInfo, delete_refused, probe_round_trip
from opskit.storage.cloud import (
    KeySpace,
    MiB,
    PartSchedule,
    PartWriter,
    list_paged,
    resuming_stream,
    split_url,
)
from opskit.storage.retry import TRANSIENT_HTTP_STATUSES, RetryPolicy, max_attempts_option

if TYPE_CHECKING:
    from opskit.storage.base import StorageConfig

DEFAULT_PART_SIZE = 16 * MiB
MAX_BLOCKS = 50_000
MAX_BLOCK_SIZE = 4000 * MiB


def block_id(number: int) -> str:
    """Return the block id of part ``number``: base64 of a fixed-width string.

    Azure requires every block id of a blob to have the same length before encoding.
    """
    return base64.b64encode(f"opskit-{number:08d}".encode()).decode()


def _status(exc: BaseException) -> int:
    if isinstance(exc, az_exceptions.HttpResponseError):
        return int(exc.status_code or 0)
    return 0


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None) or ""
    # The SDK gives a StorageErrorCode (a str enum) or a plain string.
    return str(getattr(code, "value", code))


def is_transient(exc: BaseException) -> bool:
    """Return True for Azure errors worth retrying: 408/429/5xx, dropped connections, timeouts."""
    if isinstance(exc, az_exceptions.HttpResponseError):
        return _status(exc) in TRANSIENT_HTTP_STATUSES
    return isinstance(
        exc,
        az_exceptions.ServiceRequestError
        | az_exceptions.ServiceResponseError
        | az_exceptions.IncompleteReadError
        | ConnectionError
        | TimeoutError,
    )


class AzureStorage:
    """Objects (block blobs) in an Azure container under a prefix."""

    kind = "az"

    def __init__(self, config: StorageConfig) -> None:
        self.name = config.name
        self.url = config.url
        self.container_name, prefix = split_url(config.url, "az", "container")
        self.keys = KeySpace(prefix)
        self.options = dict(config.options)
        self.retry = RetryPolicy(
            storage=self.name, max_attempts=max_attempts_option(self.options), is_transient=is_transient
        )
        self.schedule = PartSchedule(
            base=min(config.part_size or DEFAULT_PART_SIZE, MAX_BLOCK_SIZE),
            max_part=MAX_BLOCK_SIZE,
            max_parts=MAX_BLOCKS,
            grow_every=2500,
        )
        self.immutability: Immutability | None = None  # the container's policy, never set by opskit
        self._lock_state: LockState | None = None
        self._container: ContainerClient | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ client

    @property
    def container(self) -> ContainerClient:
        """Return the container client, built on first use (secrets are resolved here).

        Raises ConfigError when no way to authenticate is configured.
        """
        with self._lock:
            if self._container is None:
                self._container = self._build_service().get_container_client(self.container_name)
            return self._container

    def _build_service(self) -> BlobServiceClient:
        opts = self.options
        # retry_total=0: one attempt per SDK call, retried by opskit.storage.retry (logged, per block).
        # Downloads come in 4 MiB pieces so a reader's memory does not depend on the blob's size.
        kwargs: dict[str, Any] = {
            "retry_total": 0,
            "max_single_get_size": 4 * MiB,
            "max_chunk_get_size": 4 * MiB,
            "connection_timeout": 20,
            "read_timeout": 120,
        }
        try:
            if opts.get("connection_string") is not None:
                return BlobServiceClient.from_connection_string(opts["connection_string"].resolve().reveal(), **kwargs)
            account_url = opts.get("account_url")
            if not account_url and opts.get("account_name"):
                account_url = f"https://{opts['account_name']}.blob.core.windows.net"
            if not account_url:
                raise ConfigError(
                    f"storage '{self.name}' needs connection_string, account_url or account_name",
                    hint="set one of them (with account_key or sas_token, or azure-identity installed)",
                )
            return BlobServiceClient(account_url, credential=self._credential(account_url), **kwargs)
        except OpskitError:
            raise
        except (ValueError, az_exceptions.AzureError) as exc:
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}): cannot use the configured Azure credentials: {exc}",
                hint="check connection_string / account_url / account_key / sas_token",
            ) from exc

    def _credential(self, account_url: str) -> Any:
        opts = self.options
        if opts.get("account_key") is not None:
            account_name = opts.get("account_name") or account_url.split("//", 1)[-1].split(".", 1)[0]
            return {"account_name": account_name, "account_key": opts["account_key"].resolve().reveal()}
        if opts.get("sas_token") is not None:
            return opts["sas_token"].resolve().reveal().lstrip("?")
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise ConfigError(
                f"storage '{self.name}' has no account_key, sas_token or connection_string",
                hint="set one, or pip install azure-identity to use DefaultAzureCredential",
            ) from None
        return DefaultAzureCredential()

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
        if _code(exc) == "BlobNotFound" and key:
            return ObjectNotFound(f"storage '{self.name}' has no object '{key}'")
        what = f"{action} '{key}'" if key else action
        refused = _code(exc) in _REFUSED_CODES or _status(exc) == 403
        return StorageError(
            f"storage '{self.name}' ({self.url}): {what} failed: {self._describe(exc)}",
            hint=self._hint(exc),
            # core/errors.py's rule: a store that cannot be reached or refuses us exits 3 in any verb.
            unreachable=refused or isinstance(exc, az_exceptions.ServiceRequestError),
        )

    # ------------------------------------------------------------------ writing

    @contextmanager
    def writer(self, key: str, *, immutable: bool = False) -> Iterator[BinaryIO]:
        """Yield a stream staged as blocks of ``key``; commit the block list on a clean exit.

        ``immutable`` is accepted and has no effect here: Azure immutability is a container
        policy set by the account's owner (see :meth:`lock_state`).

        Nothing is committed on an exception. Raises StorageError when a block or the commit
        fails (after retries).
        """
        name = self.keys.full(key)
        blob = self.container.get_blob_client(name)

        def stage(number: int, data: bytes) -> str:
            ident = block_id(number)
            self._call(f"staging block {number} of", key, lambda: blob.stage_block(ident, data, length=len(data)))
            return ident

        def put_whole(data: bytes) -> None:
            self._call("uploading", key, lambda: blob.upload_blob(data, overwrite=True, max_concurrency=1))

        parts: PartWriter[str] = PartWriter(self.schedule, stage, put_whole)
        try:
            yield cast(BinaryIO, parts)
            ids = parts.finish()
            if ids:
                blocks = [BlobBlock(block_id=ident) for ident in ids]
                self._call("committing", key, lambda: blob.commit_block_list(blocks))
        except BaseException:
            # Staged blocks stay uncommitted: invisible, and garbage-collected by Azure.
            parts.cancel()
            raise

    def create(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless a blob is there; return False when one was.

        Put Blob with ``If-None-Match: *`` (``overwrite=False``): Azure answers 409
        BlobAlreadyExists when the blob exists
        (https://learn.microsoft.com/rest/api/storageservices/specifying-conditional-headers-for-blob-service-operations).
        Raises StorageError.
        """
        blob = self.container.get_blob_client(self.keys.full(key))
        try:
            self.retry.call(lambda: blob.upload_blob(data, overwrite=False, max_concurrency=1), "creating", key)
        except OpskitError:
            raise
        except az_exceptions.ResourceExistsError:
            return False
        except Exception as exc:
            if _code(exc) in {"BlobAlreadyExists", "ConditionNotMet"} or _status(exc) == 412:
                return False
            raise self._error("creating", key, exc) from exc
        return True

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reader(self, key: str) -> Iterator[BinaryIO]:
        """Yield a stream of the blob's bytes (``download_blob().chunks()``), resumed after a transient error.

        Raises ObjectNotFound when there is no such blob, StorageError otherwise.
        """
        name = self.keys.full(key)
        blob = self.container.get_blob_client(name)
        etag: str | None = None

        def open_at(offset: int) -> Iterator[bytes]:
            nonlocal etag
            args: dict[str, Any] = {"max_concurrency": 1}
            if offset:
                args["offset"] = offset
            if etag:
                # A resumed download must read the same version of the blob, not a newer one.
                args["etag"] = etag
                args["match_condition"] = MatchConditions.IfNotModified
            downloader = blob.download_blob(**args)
            etag = etag or downloader.properties.etag
            return cast(Iterator[bytes], downloader.chunks())

        with resuming_stream(open_at, self.retry, lambda exc: self._error("reading", key, exc), key) as stream:
            yield stream

    # ------------------------------------------------------------------ listing, deleting

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield every blob whose key starts with ``prefix``, one retried request per page."""
        list_prefix = self.keys.list_prefix(prefix)
        yield from list_paged(
            self.keys, lambda token: self._call("listing", prefix or "/", partial(self._list_page, list_prefix, token))
        )

    def _list_page(self, list_prefix: str, token: str | None) -> tuple[builtins.list[tuple[str, int, Any]], str | None]:
        pager = self.container.list_blobs(name_starts_with=list_prefix or None, results_per_page=1000).by_page(
            continuation_token=token
        )
        page = next(pager, None)
        items = [(b.name, int(b.size or 0), b.last_modified) for b in page] if page is not None else []
        return items, pager.continuation_token  # type: ignore[attr-defined]

    def delete(self, key: str) -> None:
        """Delete the blob and its snapshots; a missing blob is not an error.

        Raises ObjectLocked when Azure refuses because of an immutability policy or a legal
        hold; StorageError otherwise.
        """
        blob = self.container.get_blob_client(self.keys.full(key))
        try:
            with contextlib.suppress(ObjectNotFound):
                self._call("deleting", key, lambda: blob.delete_blob(delete_snapshots="include"))
        except StorageError as exc:
            cause = exc.__cause__
            if cause is not None and _status(cause) == 409 and "Immutab" in _code(cause) + str(cause):
                until = self.retained_until(key)
                raise delete_refused(self.name, key, until, "Azure immutability policy", "a legal hold") from exc
            raise

    # ------------------------------------------------------------------ immutability

    def lock_state(self) -> LockState:
        """Return whether the container enforces immutability (asked once per storage object).

        ``enabled`` is None when the credentials may not read the container's properties.
        Raises StorageError for other failures.
        """
        if self._lock_state is not None:
            return self._lock_state
        try:
            props = self.retry.call(self.container.get_container_properties, "reading the properties of", "/")
        except OpskitError:
            raise
        except Exception as exc:
            if _status(exc) not in (401, 403):
                raise self._error("reading the container's properties", None, exc) from exc
            detail = f"container '{self.container_name}': its immutability cannot be read"
            self._lock_state = LockState(None, detail)
            return self._lock_state
        policy = bool(getattr(props, "has_immutability_policy", False))
        versioned = bool(getattr(props, "immutable_storage_with_versioning_enabled", False))
        hold = bool(getattr(props, "has_legal_hold", False))
        if policy or versioned or hold:
            kinds = [
                k
                for k, on in (("a retention policy", policy), ("version-level WORM", versioned), ("a legal hold", hold))
                if on
            ]
            detail = f"container '{self.container_name}' has {' and '.join(kinds)}"
        else:
            detail = f"container '{self.container_name}' has no immutability policy"
        self._lock_state = LockState(policy or versioned or hold, detail)
        return self._lock_state

    def retained_until(self, key: str) -> datetime | None:
        """Return the expiry of the blob's immutability policy (None when it has none).

        Raises ObjectNotFound / StorageError.
        """
        blob = self.container.get_blob_client(self.keys.full(key))
        props = self._call("checking", key, blob.get_blob_properties)
        expiry = getattr(getattr(props, "immutability_policy", None), "expiry_time", None)
        return expiry if isinstance(expiry, datetime) else None

    def exists(self, key: str) -> bool:
        """Return True when a committed blob exists under ``key``."""
        blob = self.container.get_blob_client(self.keys.full(key))
        return bool(self._call("checking", key, blob.exists))

    # ------------------------------------------------------------------ probing

    def check_writable(self) -> None:
        """Write, read back and delete a probe blob under the prefix.

        Raises UnreachableError naming the storage and the cause: missing container,
        rejected key or SAS, a read-only SAS or role, no route to the account.
        """
        try:
            probe_round_trip(self)
        except UnreachableError:
            raise
        except StorageError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            raise UnreachableError(
                f"storage '{self.name}' ({self.url}): {self._describe(cause)}", hint=self._hint(cause)
            ) from exc

    # ------------------------------------------------------------------ messages

    def _describe(self, exc: BaseException) -> str:
        code = _code(exc)
        if code == "ContainerNotFound":
            return f"container '{self.container_name}' does not exist"
        if code in {"AuthenticationFailed", "InvalidAuthenticationInfo"} or (
            isinstance(exc, az_exceptions.ClientAuthenticationError) and not code
        ):
            return "the account key, SAS or token was rejected (bad credentials)"
        if code == "AuthorizationFailure":
            # Azure says this for a SAS without the needed permission or a firewall rule;
            # Azurite also says it for a wrong account key.
            return (
                f"the request to container '{self.container_name}' was not authorized "
                "(bad credentials, a read-only SAS, or a network rule)"
            )
        if code == "AuthorizationPermissionMismatch" or _status(exc) == 403:
            return (
                f"access denied to container '{self.container_name}' "
                "(a read-only credential: the SAS or role lacks write permission)"
            )
        if isinstance(exc, az_exceptions.ServiceRequestError):
            return f"cannot connect to the storage account: {exc.message}"
        if isinstance(exc, OpskitError):
            return exc.message
        if isinstance(exc, az_exceptions.HttpResponseError):
            return f"{code or exc.status_code}: {exc.reason or ''!s}".rstrip(": ")
        return f"{type(exc).__name__}: {exc}"

    def _hint(self, exc: BaseException) -> str | None:
        code = _code(exc)
        if code == "ContainerNotFound":
            return "create the container (opskit never creates containers) or fix the storage URL"
        if code in {"AuthenticationFailed", "InvalidAuthenticationInfo"}:
            return "check account_key / sas_token / connection_string (and the SAS expiry)"
        if code == "AuthorizationFailure":
            return "check account_key / sas_token / connection_string, the SAS permissions (rwdl) and firewall"
        if code == "AuthorizationPermissionMismatch" or _status(exc) == 403:
            return "grant read, write, delete and list (role 'Storage Blob Data Contributor' or a SAS with rwdl)"
        if isinstance(exc, az_exceptions.ServiceRequestError):
            return "check account_url / the connection string's BlobEndpoint and the network"
        return None


_REFUSED_CODES = {
    "ContainerNotFound",
    "AuthenticationFailed",
    "InvalidAuthenticationInfo",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
}


def open_storage(config: StorageConfig) -> AzureStorage:
    """Return the Azure storage an ``az://`` config names. Does no I/O."""
    return AzureStorage(config)
