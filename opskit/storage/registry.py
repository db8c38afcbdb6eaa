"""Storage registry: URL scheme -> backend module, imported lazily.

The cloud SDKs are extras. A backend module is imported only when a storage of its
scheme is opened, and a missing SDK becomes ``storage 'x' needs: pip install
'opskit[s3]'`` (exit 2) instead of an ImportError. Option names are declared here, not
in the backend modules, so the config can be validated without importing any SDK.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opskit.core.errors import ConfigError, MissingExtraError
from opskit.storage.base import Storage, scheme_of

if TYPE_CHECKING:
    from opskit.storage.base import StorageConfig


@dataclass(frozen=True)
class Backend:
    """A storage backend: the module that implements it, its extra, and its option names."""

    module: str
    extra: str | None
    options: frozenset[str]
    secret_options: frozenset[str] = frozenset()
    description: str = ""


# Options every storage accepts, whatever its scheme.
COMMON_OPTIONS = frozenset({"url", "offsite", "part_size"})

BACKENDS: dict[str, Backend] = {
    "file": Backend("opskit.storage.local", None, frozenset(), description="local disk or a mounted volume"),
    "s3": Backend(
        "opskit.storage.s3",
        "s3",
        frozenset(
            {
                "endpoint_url",
                "region",
                "profile",
                "sse",
                "sse_kms_key_id",
                "storage_class",
                "path_style",
                "access_key_id",
                "secret_access_key",
                "session_token",
                "max_attempts",
                # A table { mode = "governance" | "compliance", days = N }: S3 Object Lock
                # retention on every backup artifact and manifest (storage.base.Immutability).
                "immutable",
            }
        ),
        secret_options=frozenset({"access_key_id", "secret_access_key", "session_token"}),
        description="Amazon S3 and S3-compatible stores (MinIO, Ceph, R2)",
    ),
    "gs": Backend(
        "opskit.storage.gcs",
        "gcs",
        frozenset({"project", "credentials", "endpoint_url", "max_attempts"}),
        secret_options=frozenset({"credentials"}),
        description="Google Cloud Storage",
    ),
    "az": Backend(
        "opskit.storage.azure",
        "azure",
        frozenset({"account_url", "account_name", "account_key", "connection_string", "sas_token", "max_attempts"}),
        secret_options=frozenset({"account_key", "connection_string", "sas_token"}),
        description="Azure Blob Storage",
    ),
}

# The SDK module whose absence means the extra is not installed.
_SDK_MODULES = {"s3": "boto3", "gs": "google.cloud.storage", "az": "azure.storage.blob"}


def open_storage(config: StorageConfig) -> Storage:
    """Return a ready-to-use storage for ``config``.

    Raises MissingExtraError when the backend's SDK is not installed, ConfigError for an
    unknown scheme. Opening does no I/O; ``check_writable()`` probes the storage.
    """
    scheme = scheme_of(config.url)
    backend = BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(
            f"storage '{config.name}' has an unknown URL scheme '{scheme}://'",
            hint=f"use one of {', '.join(s + '://' for s in BACKENDS)}",
        )
    sdk = _SDK_MODULES.get(scheme)
    if sdk is not None:
        try:
            importlib.import_module(sdk)
        except ImportError as exc:
            raise MissingExtraError(f"storage '{config.name}' needs: pip install 'opskit[{backend.extra}]'") from exc
    module = importlib.import_module(backend.module)
    storage: Storage = module.open_storage(config)
    return storage
