"""Keys relative to a storage's prefix, and bucket URLs."""

from __future__ import annotations

import pytest

from opskit.core.errors import ConfigError, StorageError
from opskit.storage.azure import AzureStorage
from opskit.storage.base import StorageConfig
from opskit.storage.cloud import KeySpace, split_url
from opskit.storage.gcs import GCSStorage
from opskit.storage.registry import open_storage
from opskit.storage.s3 import S3Storage


def test_a_url_splits_into_bucket_and_prefix_without_outer_slashes() -> None:
    assert split_url("s3://bucket/some/prefix/", "s3") == ("bucket", "some/prefix")
    assert split_url("gs://bucket", "gs") == ("bucket", "")
    assert split_url("az://container/", "az") == ("container", "")


def test_a_url_without_a_bucket_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="names no bucket"):
        split_url("s3:///prefix", "s3")


def test_a_url_of_another_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a s3:// URL"):
        split_url("gs://bucket/prefix", "s3")


def test_keys_are_placed_under_the_prefix() -> None:
    keys = KeySpace("backups/prod")
    assert keys.full("app/1/manifest.json") == "backups/prod/app/1/manifest.json"
    assert keys.full("/app/1/") == "backups/prod/app/1"
    assert KeySpace("").full("app/x") == "app/x"


@pytest.mark.parametrize("key", ["", "/", "../x", "a/../../b", "a/.."])
def test_empty_keys_and_parent_segments_are_refused(key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        KeySpace("p").full(key)


def test_a_list_prefix_never_reaches_a_sibling_prefix() -> None:
    keys = KeySpace("backups")
    assert keys.list_prefix("") == "backups/"
    assert keys.list_prefix("app/") == "backups/app/"
    assert keys.list_prefix("app") == "backups/app"
    assert KeySpace("").list_prefix("") == ""


def test_object_names_map_back_to_relative_keys() -> None:
    keys = KeySpace("backups")
    assert keys.relative("backups/app/1/db.dump.zst") == "app/1/db.dump.zst"
    assert keys.relative("backups2/app") is None
    assert KeySpace("").relative("app/x") == "app/x"


@pytest.mark.parametrize(
    ("url", "cls", "kind"),
    [("s3://b/p", S3Storage, "s3"), ("gs://b/p", GCSStorage, "gs"), ("az://c/p", AzureStorage, "az")],
)
def test_the_registry_opens_each_cloud_backend_without_io(url: str, cls: type, kind: str) -> None:
    storage = open_storage(
        StorageConfig(name="x", url=url, options={"endpoint_url": "http://127.0.0.1:1"} if kind != "az" else {})
    )
    assert isinstance(storage, cls)
    assert storage.kind == kind
    assert storage.url == url
    assert storage.name == "x"
