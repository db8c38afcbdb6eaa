"""Object stores: the storage contract (``base``), the backend registry and one module per provider.

``from opskit.storage import Storage, open_storage`` is the face the rest of opskit uses.
"""

from opskit.storage.base import CHUNK_SIZE, ObjectInfo, Storage, StorageConfig, join_key, scheme_of
from opskit.storage.registry import BACKENDS, COMMON_OPTIONS, Backend, open_storage

__all__ = [
    "BACKENDS",
    "CHUNK_SIZE",
    "COMMON_OPTIONS",
    "Backend",
    "ObjectInfo",
    "Storage",
    "StorageConfig",
    "join_key",
    "open_storage",
    "scheme_of",
]
