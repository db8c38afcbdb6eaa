"""``opskit backup unpin`` on an S3 bucket whose Object Lock default retention keeps every new object.

The pin marker is retained like everything else written there, so its delete is refused: unpin
exited 4 and a pin could never be removed. It is now hidden behind a delete marker, after which
no listing sees it and retention decides about the backup again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from opskit import catalog
from opskit.cli import main
from opskit.config.retention import RetentionPolicy
from opskit.ops import prune
from opskit.storage.base import Immutability, StorageConfig
from opskit.storage.registry import open_storage
from tests.ops.test_prune import make_context, store_backup
from tests.servers import S3_REGION
from tests.storage.test_s3_default_retention import default_retention_bucket, versions


def write_config(tmp_path: Path, config: StorageConfig) -> Path:
    path = tmp_path / "opskit.toml"
    path.write_text(
        f'[storages.{config.name}]\nurl = "{config.url}"\nendpoint_url = "{config.options["endpoint_url"]}"\n'
        f'region = "{S3_REGION}"\nimmutable = {{ mode = "governance", days = 1 }}\n\n'
        f'[targets.app]\ndsn = "host=127.0.0.1 user=postgres dbname=test"\nstorages = ["{config.name}"]\n'
    )
    return path


def test_unpin_on_a_default_retention_bucket_hides_the_pin_and_retention_no_longer_counts_it(
    s3_bucket: StorageConfig, tmp_path: Path
) -> None:
    config = default_retention_bucket(s3_bucket, immutable=Immutability(mode="governance", days=1))
    store = open_storage(config)
    manifest = store_backup(store, datetime.now(UTC) - timedelta(hours=1))
    cli = ["--config", str(write_config(tmp_path, config)), "-q", "backup"]
    assert CliRunner().invoke(main, [*cli, "pin", manifest.id]).exit_code == 0

    result = CliRunner().invoke(main, [*cli, "unpin", manifest.id])

    assert result.exit_code == 0, result.output
    assert f"backup {manifest.id} of 'app' unpinned in vault" in result.stdout
    assert catalog.pinned_ids(store, "app") == frozenset()
    assert not store.exists(catalog.pin_key("app", manifest.id))
    assert len(versions(config, f"app/{manifest.id}/pin.json")) == 1  # retained until its date, hidden
    ctx = make_context([config], RetentionPolicy(keep_last=1))
    [decision] = prune.run(ctx, target="app", dry_run=True).results[0].plan.decisions  # type: ignore[union-attr]
    assert "pinned" not in decision.reasons
    # Pinned again later: a fresh marker, counted again.
    assert CliRunner().invoke(main, [*cli, "pin", manifest.id]).exit_code == 0
    assert catalog.pinned_ids(store, "app") == frozenset({manifest.id})
