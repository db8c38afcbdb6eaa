"""Prune against real storages (local disk and an S3 protocol server): it deletes exactly the plan."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

from opskit import catalog
from opskit.backup import backup
from opskit.backup.pin import pin
from opskit.catalog import Artifact, Manifest, Verification, record_verification
from opskit.config.model import Config, EncryptionConfig, TargetConfig
from opskit.config.retention import RetentionPolicy
from opskit.context import AppContext
from opskit.ops import prune
from opskit.pipeline import compress_and_store, recipient_fingerprint
from opskit.storage.base import Storage, StorageConfig
from tests.servers import missing_container, s3_client

TARGET = "app"
ADMIN_DSN = "host=127.0.0.1 user=postgres dbname=test"


@contextmanager
def throwaway_database(area: str) -> Iterator[str]:
    """Create ``opskit_t_<area>_<hex>`` with one small table, yield its DSN, and drop it afterwards."""
    name = f"opskit_t_{area}_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"host=127.0.0.1 user=postgres dbname={name}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE item (id int PRIMARY KEY, label text)")
            conn.execute("INSERT INTO item SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def source_dsn() -> Iterator[str]:
    """The DSN of a throwaway database that real backups are taken of."""
    with throwaway_database("prune") as dsn:
        yield dsn


# --------------------------------------------------------------------------- fixture backups


def store_backup(
    store: Storage,
    snapshot_time: datetime,
    dump: bytes | None = None,
    target: str = TARGET,
    recipients: tuple[str, ...] = (),
) -> Manifest:
    """Write a backup the way ``backup now`` commits one: artifacts through the pipeline, manifest last.

    ``dump`` is the db artifact's plain bytes (a real ``pg_dump -Fc`` archive for verify
    tests; any bytes for prune tests).
    """
    backup_id = catalog.new_backup_id(snapshot_time)
    encryption = {"format": "age", "recipients": [recipient_fingerprint(r) for r in recipients]} if recipients else None
    plains = {"db": dump if dump is not None else secrets.token_bytes(2048), "globals": b"-- roles\n"}
    artifacts = []
    for name, plain in plains.items():
        key = catalog.artifact_key(target, backup_id, name, bool(recipients))
        result = compress_and_store(io.BytesIO(plain), store, key, recipients=recipients)
        artifacts.append(
            Artifact(
                name=name,
                key=key,
                size=result.stored.size,
                sha256=result.stored.sha256,
                plain_size=result.plain.size,
                plain_sha256=result.plain.sha256,
                encryption=encryption,
            )
        )
    manifest = Manifest(
        id=backup_id,
        target=target,
        opskit_version="test",
        snapshot_time=snapshot_time,
        started_at=snapshot_time,
        finished_at=snapshot_time + timedelta(seconds=5),
        server={"version": "15.0", "major": 15, "database": "app"},
        tools={"pg_dump": {"major": 15}},
        artifacts=tuple(artifacts),
    )
    catalog.write_manifest(store, manifest)
    return manifest


def make_context(
    storages: list[StorageConfig],
    policy: RetentionPolicy | None,
    clock: Callable[[], datetime] | None = None,
    encryption: EncryptionConfig | None = None,
    extra_targets: dict[str, TargetConfig] | None = None,
    app_storages: tuple[str, ...] | None = None,
    dsn: str = ADMIN_DSN,
) -> AppContext:
    target = TargetConfig(
        name=TARGET,
        dsn=dsn,
        storages=app_storages or tuple(s.name for s in storages),
        retention="standard" if policy else None,
    )
    config = Config(
        targets={TARGET: target, **(extra_targets or {})},
        storages={s.name: s for s in storages},
        retention={"standard": policy} if policy else {},
        encryption=encryption or EncryptionConfig(),
    )
    return AppContext(config=config, clock=clock or (lambda: datetime.now(UTC)))


def keys_under(store: Storage, prefix: str) -> set[str]:
    return {info.key for info in store.list(prefix)}


@pytest.fixture(params=["local_storage", "s3_bucket"])
def storage_config(request: pytest.FixtureRequest) -> StorageConfig:
    config: StorageConfig = request.getfixturevalue(request.param)
    return config


# --------------------------------------------------------------------------- tests


def test_prune_deletes_exactly_what_the_plan_says(storage_config: StorageConfig) -> None:
    now = datetime.now(UTC)
    policy = RetentionPolicy(keep_daily=2, min_keep=1)
    ctx = make_context([storage_config], policy)
    store = ctx.storage(storage_config.name)
    newest, second, doomed, pinned, verified = (store_backup(store, now - timedelta(days=d)) for d in range(1, 6))
    pin(ctx, pinned.id)
    passed = Verification(TARGET, verified.id, store.name, now, "verify", "full", "pass")
    record_verification(store, passed)
    before = keys_under(store, f"{TARGET}/")

    dry = prune.run(ctx, target=TARGET, dry_run=True)

    (result,) = dry.results
    assert result.plan is not None
    assert [d.id for d in result.plan.deleted] == [doomed.id] == result.deleted
    assert {d.id: d.reasons for d in result.plan.kept} == {
        newest.id: (f"daily {newest.snapshot_time:%Y-%m-%d}", "min_keep"),
        second.id: (f"daily {second.snapshot_time:%Y-%m-%d}",),
        pinned.id: ("pinned",),
        verified.id: ("newest verified",),
    }
    assert keys_under(store, f"{TARGET}/") == before

    done = prune.run(ctx, target=TARGET)

    assert done.results[0].deleted == [doomed.id]
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [newest.id, second.id, pinned.id, verified.id]
    assert keys_under(store, doomed.prefix + "/") == set()
    assert keys_under(store, f"{TARGET}/") == {k for k in before if not k.startswith(doomed.prefix + "/")}


def test_prune_of_real_backups_deletes_exactly_the_plan(storage_config: StorageConfig, source_dsn: str) -> None:
    ctx = make_context([storage_config], RetentionPolicy(keep_last=1), dsn=source_dsn)
    store = ctx.storage(storage_config.name)
    taken = [backup.run(ctx, target=TARGET).manifest for _ in range(3)]
    newest = max(taken, key=lambda m: m.snapshot_time)

    report = prune.run(ctx, target=TARGET)

    plan = report.results[0].plan
    assert plan is not None
    assert [d.id for d in plan.kept] == [newest.id]
    assert sorted(report.results[0].deleted) == sorted(m.id for m in taken if m is not newest)
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [newest.id]
    assert {k.split("/")[1] for k in keys_under(store, f"{TARGET}/")} == {newest.id}


def test_a_killed_backups_leftovers_are_swept_only_after_the_grace_period(storage_config: StorageConfig) -> None:
    real_now = datetime.now(UTC)
    clock = {"now": real_now}
    ctx = make_context([storage_config], RetentionPolicy(keep_last=10), clock=lambda: clock["now"])
    store = ctx.storage(storage_config.name)
    complete = store_backup(store, real_now - timedelta(hours=2))
    killed_id = catalog.new_backup_id(real_now - timedelta(hours=1))
    leftover = catalog.artifact_key(TARGET, killed_id, "db", False)
    with store.writer(leftover) as out:
        out.write(b"half a dump")
    drill_report = catalog.drills_prefix(TARGET) + "/20261126T000000Z.json"
    catalog.write_json(store, drill_report, {"verdict": "pass"})

    young = prune.run(ctx, target=TARGET)

    assert young.results[0].swept == []
    assert store.exists(leftover)

    clock["now"] = real_now + timedelta(hours=25)
    old = prune.run(ctx, target=TARGET)

    assert old.results[0].swept == [leftover]
    assert not store.exists(leftover)
    assert store.exists(drill_report)
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [complete.id]


def test_incomplete_s3_multipart_uploads_are_aborted_after_the_grace_period(s3_bucket: StorageConfig) -> None:
    real_now = datetime.now(UTC)
    clock = {"now": real_now}
    ctx = make_context([s3_bucket], RetentionPolicy(keep_last=10), clock=lambda: clock["now"])
    bucket = s3_bucket.url.removeprefix("s3://").split("/", 1)[0]
    client = s3_client(str(s3_bucket.options["endpoint_url"]))
    key = catalog.artifact_key(TARGET, catalog.new_backup_id(real_now), "db", False)
    client.create_multipart_upload(Bucket=bucket, Key=f"backups/{key}")  # type: ignore[attr-defined]
    # Age is measured against the time the server reports; moto reports a fixed 2010 date for every
    # upload, so the clock is set relative to what the server says.
    (upload,) = client.list_multipart_uploads(Bucket=bucket)["Uploads"]  # type: ignore[attr-defined]
    initiated = upload["Initiated"].astimezone(UTC)

    clock["now"] = initiated + timedelta(hours=23)
    young = prune.run(ctx, target=TARGET)
    assert young.results[0].aborted_uploads == []

    clock["now"] = initiated + timedelta(hours=25)
    dry = prune.run(ctx, target=TARGET, dry_run=True)
    assert dry.results[0].aborted_uploads == [key]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # type: ignore[attr-defined]

    old = prune.run(ctx, target=TARGET)
    assert old.results[0].aborted_uploads == [key]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # type: ignore[attr-defined]


def test_prune_refuses_to_delete_every_backup_of_a_target(local_storage: StorageConfig) -> None:
    now = datetime.now(UTC)
    ctx = make_context([local_storage], RetentionPolicy(keep_within=timedelta(days=1), min_keep=0))
    store = ctx.storage(local_storage.name)
    backups = [store_backup(store, now - timedelta(days=d)) for d in (3, 4)]

    with pytest.raises(prune.PruneFailed) as caught:
        prune.run(ctx, target=TARGET)

    assert caught.value.exit_code == 4
    assert "refusing to delete the last good backup" in caught.value.message
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [b.id for b in backups]


def test_prune_carries_on_past_a_broken_storage_and_names_it(
    local_storage: StorageConfig, s3_bucket: StorageConfig
) -> None:
    now = datetime.now(UTC)
    broken = replace(missing_container(s3_bucket), name="broken")  # a bucket that does not exist
    other = TargetConfig(name="other", dsn="", storages=("broken",), retention="standard")
    ctx = make_context(
        [local_storage, broken], RetentionPolicy(keep_last=1), extra_targets={"other": other}, app_storages=("local",)
    )
    store = ctx.storage(local_storage.name)
    old, new = store_backup(store, now - timedelta(days=2)), store_backup(store, now - timedelta(days=1))

    with pytest.raises(prune.PruneFailed) as caught:
        prune.run(ctx, all_targets=True)

    report = caught.value.report
    assert caught.value.exit_code == 3  # the only failure is a missing bucket: unreachable (core/errors.py)
    assert "other in broken" in caught.value.message
    assert {(r.target, r.storage): bool(r.error) for r in report.results} == {
        ("app", "local"): False,
        ("other", "broken"): True,
    }
    assert report.results[0].deleted == [old.id]
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [new.id]


def test_a_target_without_a_policy_is_never_pruned(local_storage: StorageConfig) -> None:
    ctx = make_context([local_storage], policy=None)
    store = ctx.storage(local_storage.name)
    backups = [store_backup(store, datetime.now(UTC) - timedelta(days=d)) for d in (1, 2, 3)]

    report = prune.run(ctx, all_targets=True)

    assert report.results == []
    assert report.skipped == {TARGET: "no retention policy: never pruned"}
    assert len(catalog.list_backups(store, TARGET)) == len(backups)


# --------------------------------------------------------------------------- the command line


def write_config(tmp_path: Path, storage_dir: Path) -> Path:
    path = tmp_path / "opskit.toml"
    path.write_text(
        f"""
[storages.local]
url = "file://{storage_dir}"

[targets.app]
dsn = "host=127.0.0.1 user=postgres dbname=test"
retention = "standard"

[targets.scratch]
dsn = "host=127.0.0.1 user=postgres dbname=test"

[retention.standard]
keep_last = 1
"""
    )
    return path


def cli() -> click.Group:
    from opskit.cli import main

    return main


def test_the_prune_command_prints_the_plan_and_a_summary(tmp_path: Path) -> None:
    storage_dir = tmp_path / "backups"
    config_path = write_config(tmp_path, storage_dir)
    store = make_context([StorageConfig("local", f"file://{storage_dir}")], None).storage("local")
    now = datetime.now(UTC)
    kept, doomed = store_backup(store, now - timedelta(hours=1)), store_backup(store, now - timedelta(hours=2))

    result = CliRunner().invoke(cli(), ["--config", str(config_path), "prune", "--all", "--dry-run"])

    assert result.exit_code == 0, result.stdout
    assert f"{kept.id}" in result.stdout and "keep" in result.stdout and "last, min_keep" in result.stdout
    assert f"{doomed.id}" in result.stdout and "DELETE" in result.stdout
    assert "app/local: kept 1, would delete 1" in result.stdout
    assert "scratch: skipped, no retention policy" in result.stdout

    as_json = CliRunner().invoke(cli(), ["--config", str(config_path), "prune", "--target", "app", "--json"])

    assert as_json.exit_code == 0, as_json.stdout
    document = json.loads(as_json.stdout)
    assert document["results"][0]["deleted"] == [doomed.id]
    assert document["results"][0]["plan"]["decisions"][1] == {
        "id": doomed.id,
        "kind": "logical",
        "snapshot_time": catalog.format_time(doomed.snapshot_time),
        "action": "delete",
        "reasons": [],
    }
    assert [m.id for m in catalog.list_backups(store, "app")] == [kept.id]


def test_the_prune_command_exits_4_naming_the_failure(tmp_path: Path) -> None:
    storage_dir = tmp_path / "backups"
    config_path = tmp_path / "opskit.toml"
    config_path.write_text(
        f"""
[storages.local]
url = "file://{storage_dir}"

[targets.app]
dsn = "host=127.0.0.1 user=postgres dbname=test"
retention = "only_recent"

[retention.only_recent]
keep_within = "1h"
min_keep = 0
"""
    )
    store = make_context([StorageConfig("local", f"file://{storage_dir}")], None).storage("local")
    store_backup(store, datetime.now(UTC) - timedelta(days=2))

    result = CliRunner().invoke(cli(), ["--config", str(config_path), "prune"])

    assert result.exit_code == 4
    assert "opskit: error: prune failed" in result.stderr
    assert "app in local" in result.stderr and "refusing to delete the last good backup" in result.stderr
    assert "app/local: kept 0, deleted 0" in result.stdout and "FAILED" in result.stdout


def test_prune_refuses_to_delete_the_last_base_backup_however_many_dumps_it_keeps(local_storage: StorageConfig) -> None:
    now = datetime.now(UTC)
    ctx = make_context([local_storage], RetentionPolicy(keep_within=timedelta(days=1), min_keep=0))
    store = ctx.storage(local_storage.name)
    base = replace(store_backup(store, now - timedelta(days=3)), kind="base")
    catalog.write_manifest(store, base)
    dumps = [store_backup(store, now - timedelta(hours=h)) for h in (1, 2)]

    with pytest.raises(prune.PruneFailed) as caught:
        prune.run(ctx, target=TARGET)

    assert caught.value.exit_code == 4
    assert "would delete all 1 base backups (point-in-time recovery would be lost)" in caught.value.message
    assert sorted(m.id for m in catalog.list_backups(store, TARGET)) == sorted([base.id, *(d.id for d in dumps)])


# --------------------------------------------------------------------------- prune and copy agree


def two_storages(tmp_path: Path, secondary: StorageConfig, rules: str) -> tuple[Path, Storage, Storage]:
    """Write a config: target app on storage ``primary`` (local disk) and ``off`` (``secondary``), kept by ``rules``.

    Returns the config file and both storages, opened as the CLI opens them.
    """
    from opskit.storage import open_storage
    from tests.databases import storage_table

    off = storage_table(secondary)
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in off.items())
    path = tmp_path / "two.toml"
    path.write_text(
        f"""
[storages.primary]
url = "file://{tmp_path / "primary"}"

[storages.off]
{lines}offsite = true

[targets.app]
dsn = "host=127.0.0.1 user=postgres dbname=test"
storages = ["primary", "off"]
retention = "standard"

[retention.standard]
{rules}"""
    )
    primary = open_storage(StorageConfig("primary", f"file://{tmp_path / 'primary'}"))
    return path, primary, open_storage(replace(secondary, name="off"))


def run_json(config_path: Path, *args: str) -> dict[str, object]:
    """Run ``opskit --config C ARGS --json`` in process; return its JSON document (exit 0 asserted)."""
    result = CliRunner().invoke(cli(), ["--config", str(config_path), *args, "--json"])
    assert result.exit_code == 0, result.output
    document: dict[str, object] = json.loads(result.stdout)
    return document


def by_storage(report: dict[str, object], field_name: str) -> dict[str, object]:
    """Return {storage: result[field_name]} of a prune JSON report."""
    results = report["results"]
    assert isinstance(results, list)
    return {r["storage"]: r[field_name] for r in results}


def test_prune_then_copy_then_prune_change_nothing_more_when_the_newest_verified_backup_was_verified_on_the_primary(
    tmp_path: Path, storage_config: StorageConfig
) -> None:
    config_path, primary, off = two_storages(tmp_path, storage_config, "keep_last = 1\n")
    now = datetime.now(UTC)
    newest, verified, oldest = (store_backup(primary, now - timedelta(days=d)) for d in (1, 2, 3))
    # What 'opskit backup verify' records: the check ran on the primary, so the record is there only.
    record_verification(primary, Verification(TARGET, verified.id, "primary", now, "verify", "full", "pass"))

    copied = run_json(config_path, "copy")
    dry = run_json(config_path, "prune", "--dry-run")
    pruned = run_json(config_path, "prune")
    again = run_json(config_path, "copy")
    last = run_json(config_path, "prune")

    off_plan = by_storage(dry, "plan")["off"]
    assert isinstance(off_plan, dict)
    assert {d["id"]: (d["action"], d["reasons"]) for d in off_plan["decisions"]} == {
        newest.id: ("keep", ["last", "min_keep"]),
        verified.id: ("keep", ["newest verified"]),
    }
    assert by_storage(pruned, "deleted") == {"primary": [oldest.id], "off": []}
    assert copied["copied"] == [
        {"target": TARGET, "storage": "off", "backup": verified.id},
        {"target": TARGET, "storage": "off", "backup": newest.id},
    ]
    assert copied["not_retained"] == [{"target": TARGET, "storage": "off", "backup": oldest.id}]
    assert again["copied"] == [] and again["not_retained"] == [] and again["skipped"] == 2
    assert by_storage(last, "deleted") == {"primary": [], "off": []}
    assert [m.id for m in catalog.list_backups(off, TARGET)] == [newest.id, verified.id]
    assert [m.id for m in catalog.list_backups(primary, TARGET)] == [newest.id, verified.id]


def test_a_primary_verification_vouches_only_for_a_secondary_copy_with_the_same_stored_bytes(
    local_storage: StorageConfig, tmp_path: Path
) -> None:
    from opskit.backup.copy import copy_backup

    ctx = make_context(
        [local_storage, StorageConfig("off", f"file://{tmp_path / 'off'}")], RetentionPolicy(keep_last=1)
    )
    primary, off = ctx.storage("local"), ctx.storage("off")
    now = datetime.now(UTC)
    newest, other_bytes, same_bytes = (store_backup(primary, now - timedelta(days=d)) for d in (1, 2, 3))
    for manifest in (newest, other_bytes, same_bytes):
        copy_backup(ctx, manifest, primary, off, wal=False)
    # The same id on the secondary, but a manifest naming other stored bytes (another cluster, a hand edit).
    db, *rest = other_bytes.artifacts
    catalog.write_manifest(off, replace(other_bytes, artifacts=(replace(db, sha256="0" * 64), *rest)))
    for manifest, age in ((other_bytes, 1), (same_bytes, 2)):
        record = Verification(TARGET, manifest.id, "local", now - timedelta(hours=age), "verify", "full", "pass")
        record_verification(primary, record)

    report = prune.run(ctx, target=TARGET, storage="off")

    assert report.results[0].plan is not None
    assert {d.id: d.reasons for d in report.results[0].plan.kept} == {
        newest.id: ("last", "min_keep"),
        same_bytes.id: ("newest verified",),
    }
    assert report.results[0].deleted == [other_bytes.id]
    assert [m.id for m in catalog.list_backups(off, TARGET)] == [newest.id, same_bytes.id]


def test_prune_of_a_secondary_deletes_nothing_when_the_primary_cannot_be_read(
    local_storage: StorageConfig, s3_bucket: StorageConfig
) -> None:
    gone = replace(missing_container(s3_bucket), name="gone")  # the primary: a bucket that does not exist
    ctx = make_context([gone, local_storage], RetentionPolicy(keep_last=1), app_storages=("gone", "local"))
    store = ctx.storage(local_storage.name)
    now = datetime.now(UTC)
    backups = [store_backup(store, now - timedelta(days=d)) for d in (1, 2, 3)]

    with pytest.raises(prune.PruneFailed) as caught:
        prune.run(ctx, target=TARGET)

    assert caught.value.exit_code == 3  # both pairs failed reading the missing bucket: unreachable
    assert {r.storage: (bool(r.error), r.deleted) for r in caught.value.report.results} == {
        "gone": (True, []),
        "local": (True, []),
    }
    assert [m.id for m in catalog.list_backups(store, TARGET)] == [b.id for b in backups]
