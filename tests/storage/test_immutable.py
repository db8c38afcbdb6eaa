"""Immutable backups against real servers: S3 Object Lock on moto, what the GCS emulator and Azurite allow.

moto implements Object Lock on a bucket created with it enabled: retention on PutObject, a
refused DeleteObject of a locked version (governance without the bypass header, compliance
always). It ignores the retention headers of CreateMultipartUpload, which is why the S3
writer checks every locked object after it is written and sets the retention when missing.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.backup import backup
from opskit.cli import main
from opskit.config.load import build_config
from opskit.context import AppContext
from opskit.core.errors import ConfigError, ObjectLocked, StorageError
from opskit.ops import config_check, prune, status
from opskit.secrets.references import SecretRef
from opskit.storage.base import Immutability, ObjectLocks, StorageConfig
from opskit.storage.registry import open_storage
from tests.databases import dsn_for, run_sql
from tests.servers import SMALL_PART_SIZE, s3_client, unique_name

GOVERNANCE_DAY = Immutability(mode="governance", days=1)


def bucket_of(config: StorageConfig) -> str:
    """Return the bucket name of an ``s3://bucket/prefix`` config."""
    return config.url.removeprefix("s3://").split("/", 1)[0]


@pytest.fixture
def locked_bucket(s3_bucket: StorageConfig) -> Iterator[StorageConfig]:
    """Yield a config for a fresh moto bucket created with Object Lock, the storage set immutable."""
    client: Any = s3_client(str(s3_bucket.options["endpoint_url"]))
    bucket = unique_name("opskit-t-lock")
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    options = {**s3_bucket.options, "immutable": GOVERNANCE_DAY}
    yield replace(s3_bucket, url=f"s3://{bucket}/backups", options=options, part_size=SMALL_PART_SIZE)


def raw_client(config: StorageConfig) -> Any:
    """Return a plain boto3 client on the config's server: what someone with the credentials could do."""
    return s3_client(str(config.options["endpoint_url"]))


def versions_of(config: StorageConfig, key: str) -> list[dict[str, Any]]:
    """Return every version and delete marker stored under ``backups/<key>``."""
    page = raw_client(config).list_object_versions(Bucket=bucket_of(config), Prefix=f"backups/{key}")
    return [v for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])] if v["Key"] == f"backups/{key}"]


def write(config: StorageConfig, key: str, data: bytes, immutable: bool) -> None:
    store = open_storage(config)
    with store.writer(key, immutable=immutable) as out:
        out.write(data)


# --------------------------------------------------------------------------- S3 Object Lock (moto)


@pytest.mark.parametrize("size", [1024, 3 * SMALL_PART_SIZE + 17], ids=["single put", "multipart"])
def test_a_backup_object_is_stored_under_retention_and_no_one_can_delete_its_version(
    locked_bucket: StorageConfig, size: int
) -> None:
    before = datetime.now(UTC)
    write(locked_bucket, "app/b1/db.dump.zst", secrets.token_bytes(size), immutable=True)

    head = raw_client(locked_bucket).head_object(Bucket=bucket_of(locked_bucket), Key="backups/app/b1/db.dump.zst")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert before + timedelta(days=1) - timedelta(minutes=1) <= head["ObjectLockRetainUntilDate"]
    assert head["ObjectLockRetainUntilDate"] <= datetime.now(UTC) + timedelta(days=1)
    (version,) = versions_of(locked_bucket, "app/b1/db.dump.zst")
    with pytest.raises(Exception, match="AccessDenied"):
        raw_client(locked_bucket).delete_object(
            Bucket=bucket_of(locked_bucket), Key="backups/app/b1/db.dump.zst", VersionId=version["VersionId"]
        )
    assert len(versions_of(locked_bucket, "app/b1/db.dump.zst")) == 1


def test_opskit_delete_of_a_locked_object_is_refused_with_its_date_and_the_object_stays(
    locked_bucket: StorageConfig,
) -> None:
    write(locked_bucket, "app/b1/manifest.json", b"{}", immutable=True)
    store = open_storage(locked_bucket)

    with pytest.raises(ObjectLocked) as refused:
        store.delete("app/b1/manifest.json")

    assert "'app/b1/manifest.json' is immutable until " in refused.value.one_line()
    assert refused.value.exit_code == 4
    with store.reader("app/b1/manifest.json") as inp:
        assert inp.read() == b"{}"
    assert [v.get("IsLatest") for v in versions_of(locked_bucket, "app/b1/manifest.json")] == [True]


def test_records_written_without_immutable_are_deleted_with_every_version(locked_bucket: StorageConfig) -> None:
    write(locked_bucket, "app/b1/pin.json", b"{}", immutable=False)
    write(locked_bucket, "app/b1/pin.json", b"{ }", immutable=False)
    store = open_storage(locked_bucket)
    assert isinstance(store, ObjectLocks) and store.retained_until("app/b1/pin.json") is None

    store.delete("app/b1/pin.json")

    assert versions_of(locked_bucket, "app/b1/pin.json") == []
    assert not store.exists("app/b1/pin.json")


def test_check_writable_leaves_no_probe_version_behind_on_a_locked_bucket(locked_bucket: StorageConfig) -> None:
    open_storage(locked_bucket).check_writable()

    page = raw_client(locked_bucket).list_object_versions(Bucket=bucket_of(locked_bucket))
    assert page.get("Versions", []) == [] and page.get("DeleteMarkers", []) == []


def test_lock_state_says_whether_the_bucket_has_object_lock(
    locked_bucket: StorageConfig, s3_bucket: StorageConfig
) -> None:
    locked, plain = open_storage(locked_bucket), open_storage(s3_bucket)
    assert isinstance(locked, ObjectLocks) and isinstance(plain, ObjectLocks)

    assert locked.lock_state().enabled is True
    assert "has Object Lock enabled" in locked.lock_state().detail
    assert plain.lock_state().enabled is False
    assert plain.lock_state().detail == f"bucket '{bucket_of(s3_bucket)}' has no Object Lock"


def test_an_immutable_storage_on_a_bucket_without_object_lock_fails_the_write_and_says_how_to_fix_it(
    s3_bucket: StorageConfig,
) -> None:
    config = replace(s3_bucket, options={**s3_bucket.options, "immutable": GOVERNANCE_DAY})

    with pytest.raises(StorageError) as failed:
        write(config, "app/b1/db.dump.zst", b"x" * 100, immutable=True)

    assert "the bucket has no Object Lock" in failed.value.one_line()
    assert not open_storage(s3_bucket).exists("app/b1/db.dump.zst")


def test_a_backup_to_an_immutable_storage_without_object_lock_is_refused_before_pg_dump_runs(
    make_context: Callable[..., AppContext], pg_database: str, s3_bucket: StorageConfig
) -> None:
    storages = {"wrong": {**storage_table(s3_bucket), "immutable": {"days": 7}}}
    ctx = immutable_context(make_context, pg_database, storages)

    with pytest.raises(ConfigError) as refused:
        backup.run(ctx, "app")

    assert refused.value.exit_code == 2
    assert "has 'immutable' set, but bucket '" in refused.value.one_line()
    assert "has no Object Lock; enable Object Lock on the bucket" in refused.value.one_line()
    assert [info.key for info in open_storage(s3_bucket).list("app/")] == []


def test_a_server_side_copy_to_an_immutable_storage_carries_its_retention(
    locked_bucket: StorageConfig, s3_bucket: StorageConfig
) -> None:
    write(s3_bucket, "app/b1/db.dump.zst", b"dump" * 100, immutable=True)
    dest = open_storage(locked_bucket)

    assert dest.copy_from(open_storage(s3_bucket), "app/b1/db.dump.zst")  # type: ignore[attr-defined]

    assert isinstance(dest, ObjectLocks)
    until = dest.retained_until("app/b1/db.dump.zst")
    assert until is not None and until > datetime.now(UTC) + timedelta(hours=23)


# --------------------------------------------------------------------------- configuration


def test_the_immutable_table_becomes_the_storage_option() -> None:
    raw = {"storages": {"s": {"url": "s3://bucket/backups", "immutable": {"mode": "compliance", "days": 30}}}}

    config = build_config(raw)

    assert config.storages["s"].options["immutable"] == Immutability("compliance", 30)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"mode": "forever", "days": 3}, "At 'storages.s.immutable.mode': must be one of governance, compliance"),
        ({"mode": "governance"}, "At 'storages.s.immutable.days': is required"),
        ({"days": 0}, "At 'storages.s.immutable.days': must be at least 1"),
        ({"days": 3, "years": 1}, "At 'storages.s.immutable.years': unknown key"),
        ("30d", "At 'storages.s.immutable': must be a table"),
    ],
)
def test_a_bad_immutable_table_is_one_line_naming_the_key(table: object, problem: str) -> None:
    with pytest.raises(ConfigError) as bad:
        build_config({"storages": {"s": {"url": "s3://bucket/backups", "immutable": table}}})

    assert problem in bad.value.one_line()


def test_immutable_is_an_s3_option_only() -> None:
    with pytest.raises(ConfigError) as bad:
        build_config({"storages": {"g": {"url": "gs://bucket/backups", "immutable": {"days": 3}}}})

    assert "At 'storages.g.immutable': unknown key" in bad.value.one_line()


# --------------------------------------------------------------------------- backup, prune, status, config check


@pytest.fixture
def two_buckets(locked_bucket: StorageConfig, s3_bucket: StorageConfig) -> dict[str, Any]:
    """Return the storage tables of a primary on an Object Lock bucket and an offsite copy on a plain one."""
    return {
        "vault": {**storage_table(locked_bucket), "immutable": {"mode": "governance", "days": 1}},
        "plain": {**storage_table(s3_bucket), "offsite": True},
    }


def immutable_context(
    make_context: Callable[..., AppContext], dbname: str, storages: dict[str, Any], **kwargs: Any
) -> AppContext:
    raw = {
        "targets": {"app": {"dsn": dsn_for(dbname), "storages": list(storages), "retention": "one"}},
        "storages": storages,
        "retention": {"one": {"keep_last": 1, "min_keep": 1}},
    }
    return make_context(raw, **kwargs)


def storage_table(config: StorageConfig) -> dict[str, Any]:
    """Return the config table of a fixture's StorageConfig (secrets as their references)."""
    table: dict[str, Any] = {"url": config.url}
    for key, value in config.options.items():
        if key != "immutable":
            table[key] = value.reference if isinstance(value, SecretRef) else value
    return table


def test_a_locked_backup_survives_a_delete_attempt_and_prune_keeps_it_with_the_reason(
    make_context: Callable[..., AppContext], pg_database: str, two_buckets: dict[str, Any]
) -> None:
    run_sql(pg_database, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    ctx = immutable_context(make_context, pg_database, two_buckets)
    older = backup.run(ctx, "app").manifest
    newer = backup.run(ctx, "app").manifest
    vault, plain = ctx.storage("vault"), ctx.storage("plain")
    dump = next(a.key for a in older.artifacts if a.name == "db")

    with pytest.raises(ObjectLocked):
        vault.delete(dump)
    with pytest.raises(ObjectLocked):
        vault.delete(catalog.manifest_key("app", older.id))

    dry = prune.run(ctx, target="app", dry_run=True)

    by_storage = {r.storage: r for r in dry.results}
    vault_plan = by_storage["vault"].plan
    assert vault_plan is not None and [d.id for d in vault_plan.deleted] == []
    (older_decision,) = [d for d in vault_plan.decisions if d.id == older.id]
    assert older_decision.keep and older_decision.reasons[0].startswith("immutable until ")
    assert by_storage["plain"].deleted == [older.id]

    prune.run(ctx, target="app")

    assert {m.id for m in catalog.list_backups(vault, "app")} == {older.id, newer.id}
    assert vault.exists(dump)
    assert {m.id for m in catalog.list_backups(plain, "app")} == {newer.id}
    assert not any(info.key.startswith(f"app/{older.id}/") for info in plain.list("app/"))


def test_status_says_which_copies_of_the_newest_backup_are_immutable_and_until_when(
    make_context: Callable[..., AppContext], pg_database: str, two_buckets: dict[str, Any]
) -> None:
    ctx = immutable_context(make_context, pg_database, two_buckets)
    before = datetime.now(UTC)
    backup.run(ctx, "app")

    report = status.run(ctx, "app").to_dict()

    vault, plain = report["targets"][0]["storages"]
    assert vault["immutability"]["object_lock"] is True
    assert vault["immutability"]["newest_immutable"] is True
    until = catalog.parse_time(vault["immutability"]["newest_immutable_until"])
    assert before + timedelta(hours=23) < until <= datetime.now(UTC) + timedelta(days=1)
    assert plain["offsite"] is True
    assert plain["immutability"]["object_lock"] is False
    assert plain["immutability"]["newest_immutable"] is False
    assert "has no Object Lock" in plain["immutability"]["detail"]


def test_prune_reports_a_refused_delete_of_a_locked_leftover_and_does_not_fail(
    make_context: Callable[..., AppContext], pg_database: str, locked_bucket: StorageConfig
) -> None:
    storages = {"vault": {**storage_table(locked_bucket), "immutable": {"mode": "compliance", "days": 1}}}
    # The run's clock is a day on: the leftover is past the grace period, the server's lock is not.
    later = datetime.now(UTC) + timedelta(hours=25)
    ctx = immutable_context(make_context, pg_database, storages, clock=lambda: later)
    store = ctx.storage("vault")
    leftover = catalog.artifact_key("app", catalog.new_backup_id(datetime.now(UTC)), "db", False)
    with store.writer(leftover, immutable=True) as out:
        out.write(b"a dump whose backup never committed")

    report = prune.run(ctx, target="app")

    (result,) = report.results
    assert result.error is None and result.swept == []
    assert len(result.locked) == 1 and f"'{leftover}' is immutable until " in result.locked[0]
    assert store.exists(leftover)


def test_config_check_says_whether_each_bucket_has_object_lock(
    make_context: Callable[..., AppContext], pg_database: str, two_buckets: dict[str, Any], s3_bucket: StorageConfig
) -> None:
    storages = {**two_buckets, "wrong": {**storage_table(s3_bucket), "immutable": {"days": 7}}}
    ctx = immutable_context(make_context, pg_database, storages)

    report = config_check.run(ctx)

    lines = {r.check: r for r in report.results}
    assert lines["storage vault immutability"].status == "OK"
    assert "has Object Lock enabled" in lines["storage vault immutability"].detail
    assert "locked (governance, 1 day)" in lines["storage vault immutability"].detail
    assert lines["storage plain immutability"].status == "OK"
    assert "has no Object Lock; opskit sets no retention" in lines["storage plain immutability"].detail
    assert lines["storage wrong"].status == "FAIL"
    assert "has 'immutable' set, but bucket '" in lines["storage wrong"].detail
    assert "has no Object Lock" in lines["storage wrong"].detail
    assert report.exit_code == 2


def test_the_status_and_prune_commands_show_what_is_immutable(
    make_context: Callable[..., AppContext], pg_database: str, two_buckets: dict[str, Any], tmp_path: Path
) -> None:
    ctx = immutable_context(make_context, pg_database, two_buckets)
    older = backup.run(ctx, "app").manifest
    backup.run(ctx, "app")
    config_path = tmp_path / "opskit.toml"
    config_path.write_text(toml_of(two_buckets, pg_database, tmp_path))

    shown = CliRunner().invoke(main, ["--config", str(config_path), "status", "--target", "app"])
    dry = CliRunner().invoke(main, ["--config", str(config_path), "prune", "--target", "app", "--dry-run"])

    assert "    immutability: newest immutable until " in shown.stdout
    assert "    immutability: newest NOT immutable (bucket " in shown.stdout
    assert dry.exit_code == 0, dry.stdout
    vault_part = dry.stdout.split("== app in storage plain")[0]
    (older_row,) = [line for line in vault_part.splitlines() if line.startswith(older.id)]
    assert "keep" in older_row and "immutable until " in older_row
    assert "app/vault: kept 2, would delete 0" in dry.stdout
    assert "app/plain: kept 1, would delete 1" in dry.stdout
    assert len(catalog.list_backups(ctx.storage("plain"), "app")) == 2  # a dry run deletes nothing


def toml_of(storages: dict[str, Any], dbname: str, tmp_path: Path) -> str:
    """Return the TOML text of the same config ``immutable_context`` builds."""
    lines = [f'[tools]\nstate_dir = "{tmp_path / "state"}"\n', "[targets.app]", f'dsn = "{dsn_for(dbname)}"']
    lines += [f"storages = {json.dumps(list(storages))}", 'retention = "one"', "[retention.one]", "keep_last = 1"]
    for name, table in storages.items():
        lines.append(f"[storages.{name}]")
        for key, value in table.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- GCS retention policy, Azure immutability


def set_gcs_retention(config: StorageConfig, seconds: int) -> None:
    """Give the emulator's bucket a retention policy (it keeps one set by PATCH, not at creation)."""
    endpoint = str(config.options["endpoint_url"])
    bucket = config.url.removeprefix("gs://").split("/", 1)[0]
    body = json.dumps({"retentionPolicy": {"retentionPeriod": str(seconds)}}).encode()
    request = urllib.request.Request(
        f"{endpoint}/storage/v1/b/{bucket}", data=body, headers={"Content-Type": "application/json"}, method="PATCH"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def test_a_gcs_bucket_retention_policy_keeps_a_backup_in_the_plan_until_it_ends(
    make_context: Callable[..., AppContext], pg_database: str, gcs_bucket: StorageConfig
) -> None:
    set_gcs_retention(gcs_bucket, 86400)
    ctx = immutable_context(make_context, pg_database, {"gcs": storage_table(gcs_bucket)})
    older = backup.run(ctx, "app").manifest
    backup.run(ctx, "app")
    store = ctx.storage("gcs")
    assert isinstance(store, ObjectLocks)

    state = store.lock_state()
    until = store.retained_until(catalog.manifest_key("app", older.id))
    dry = prune.run(ctx, target="app", dry_run=True)

    assert state.enabled is True
    assert state.detail.startswith(f"bucket '{bucket_of_gs(gcs_bucket)}' has a retention policy of 1d")
    assert until is not None and datetime.now(UTC) + timedelta(hours=23) < until
    (result,) = dry.results
    assert result.plan is not None and result.plan.deleted == ()
    (kept,) = [d for d in result.plan.decisions if d.id == older.id]
    assert kept.reasons == (f"immutable until {until.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z",)
    check = {r.check: r for r in config_check.run(ctx).results}["storage gcs immutability"]
    assert check.status == "OK" and "has a retention policy of 1d" in check.detail
    # The emulator stores the policy but does not enforce it: a delete it would refuse on GCS
    # succeeds here, so the refusal itself (403 -> ObjectLocked) is not exercised.


def test_a_gcs_bucket_without_retention_and_an_azurite_container_are_reported_not_immutable(
    gcs_bucket: StorageConfig, azure_container: StorageConfig
) -> None:
    gcs, azure = open_storage(gcs_bucket), open_storage(azure_container)
    assert isinstance(gcs, ObjectLocks) and isinstance(azure, ObjectLocks)
    with gcs.writer("app/b1/manifest.json", immutable=True) as out:
        out.write(b"{}")
    with azure.writer("app/b1/manifest.json", immutable=True) as out:
        out.write(b"{}")

    assert gcs.lock_state().enabled is False
    assert gcs.lock_state().detail == f"bucket '{bucket_of_gs(gcs_bucket)}' has no retention policy"
    assert gcs.retained_until("app/b1/manifest.json") is None
    assert azure.lock_state().enabled is False
    assert "has no immutability policy" in azure.lock_state().detail
    assert azure.retained_until("app/b1/manifest.json") is None
    # Azurite answers NotImplemented to immutability policies and legal holds, so a locked blob
    # (and Azure's 409 refusal, raised as ObjectLocked) cannot be made here.
    azure.delete("app/b1/manifest.json")
    assert not azure.exists("app/b1/manifest.json")


def bucket_of_gs(config: StorageConfig) -> str:
    return config.url.removeprefix("gs://").split("/", 1)[0]
