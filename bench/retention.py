"""Benchmark retention planning and listing over many backups.

- ``plan``: ``opskit.plan.retention.plan()`` over N synthetic backups (one an hour, newest
  first) with a typical policy (keep_last 24, keep_daily 14, keep_weekly 8,
  keep_monthly 12, keep_yearly 5, keep_within 2d), pure CPU.
- ``list``: ``opskit.catalog.list_backups()`` of N backups in a moto S3 server on
  loopback: one ListObjectsV2 page per 1,000 keys, then one GET per manifest. The
  manifests are created beforehand with a thread pool (untimed).

Each measured ``--runs`` times (median shown). N is 10,000 (``--backups``), 1,000 with ``--quick``.

Usage: ``python bench/retention.py [--backups 10000] [--runs 3] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import _common as c

from opskit import catalog
from opskit.catalog import Artifact, Manifest
from opskit.config.retention import RetentionPolicy
from opskit.plan import retention
from opskit.secrets.references import SecretRef
from opskit.storage.base import StorageConfig
from opskit.storage.registry import open_storage
from tests.servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY

TARGET = "bench"
POLICY = RetentionPolicy(
    keep_last=24, keep_daily=14, keep_weekly=8, keep_monthly=12, keep_yearly=5, keep_within=timedelta(days=2)
)


def synthetic_manifests(count: int, now: datetime) -> list[Manifest]:
    """Return ``count`` manifests, one an hour going back from ``now``, shaped like real ones."""
    manifests = []
    for hour in range(count):
        snapshot = now - timedelta(hours=hour + 1)
        backup_id = catalog.new_backup_id(snapshot)
        artifact = Artifact(
            name="db",
            key=catalog.artifact_key(TARGET, backup_id, "db", False),
            size=123_456_789,
            sha256="0" * 64,
            plain_size=987_654_321,
            plain_sha256="1" * 64,
        )
        globals_ = Artifact(
            name="globals",
            key=catalog.artifact_key(TARGET, backup_id, "globals", False),
            size=357,
            sha256="2" * 64,
            plain_size=640,
            plain_sha256="3" * 64,
        )
        manifests.append(
            Manifest(
                id=backup_id,
                target=TARGET,
                opskit_version="bench",
                snapshot_time=snapshot,
                started_at=snapshot,
                finished_at=snapshot + timedelta(minutes=3),
                server={"version": "15.20", "major": 15, "database": "app"},
                tools={"pg_dump": {"major": 15}},
                artifacts=(artifact, globals_),
            )
        )
    return manifests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backups", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1,000 backups, one run: checks the script works")
    args = parser.parse_args()
    if args.quick:
        args.backups, args.runs = 1_000, 1

    c.print_machine(c.machine())
    now = datetime.now(UTC).replace(microsecond=0)
    manifests = synthetic_manifests(args.backups, now)

    plans = []
    for _ in range(args.runs):
        plans.append(c.timed(lambda: retention.plan(manifests, POLICY, now)))
    kept = sum(1 for _ in retention.plan(manifests, POLICY, now).kept)

    lists = []
    with c.moto_server() as endpoint:
        storage = open_storage(
            StorageConfig(
                name="s3",
                url=f"s3://{endpoint.bucket}/opskit",
                options={
                    "endpoint_url": endpoint.url,
                    "region": S3_REGION,
                    "access_key_id": SecretRef(S3_ACCESS_KEY),
                    "secret_access_key": SecretRef(S3_SECRET_KEY),
                },
            )
        )
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(lambda m: catalog.write_manifest(storage, m), manifests))
        created = time.perf_counter() - started
        for _ in range(args.runs):
            started = time.perf_counter()
            found = catalog.list_backups(storage, TARGET)
            lists.append(c.Sample(time.perf_counter() - started))
            assert len(found) == args.backups, f"listed {len(found)} of {args.backups}"

    plan_s, list_s = c.median(plans), c.median(lists)
    print(f"\nretention over {args.backups:,} backups (policy keeps {kept}), median of {args.runs}:")
    c.print_table(
        ["case", "wall s", "per backup"],
        [
            ["retention.plan()", f"{plan_s.seconds:.3f}", f"{plan_s.seconds / args.backups * 1e6:.1f} us"],
            [
                "catalog.list_backups() on moto S3",
                f"{list_s.seconds:.2f}",
                f"{list_s.seconds / args.backups * 1e3:.2f} ms",
            ],
        ],
    )
    print(f"  (creating the {args.backups:,} manifests with 16 threads took {created:.1f} s, untimed)")


if __name__ == "__main__":
    main()
