"""Benchmark ``opskit restore --jobs 2`` from S3 against the common recipe.

On a cached ``pgbench -i -s SCALE`` database, one backup is taken into a moto S3 server
(untimed), and the common recipe's ``pg_dump -Fc`` file is uploaded next to it. Then,
``--runs`` times each (median shown):

- ``opskit restore --jobs 2``  fetch, check both sha256, decompress into a spool file,
                               ``pg_restore -j 2``, then compare every table's row count
- ``recipe``                   boto3 ``download_file`` of the ``-Fc`` dump, ``CREATE DATABASE``,
                               ``pg_restore -d`` (serial)

Targets (issue 9): opskit wall <= 0.75x the recipe; opskit's own peak RSS flat (within 15%)
between ``--rss-scale`` and ``--scale``.

Usage: ``python bench/restore.py [--scale 70] [--rss-scale 20] [--runs 3] [--text-mib N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import _common as c
import psycopg

TARGETS = {"vs_recipe": 0.75, "rss_flat": 0.15}


def prepare(database: str, workdir: Path, endpoint: c.S3Endpoint) -> Path:
    """Back up ``database`` with opskit and upload a ``pg_dump -Fc`` of it; return the opskit config."""
    config = c.write_config(workdir, database, "s3", endpoint)
    c.run_measured(c.opskit_argv(config, "backup", "now"), env=c.opskit_env(), cwd=workdir)
    dump = workdir / "x.dump"
    c.run_measured(["pg_dump", "-Fc", "-h", c.PG_HOST, "-U", c.PG_USER, "-f", str(dump), database], capture=False)
    endpoint.client().upload_file(str(dump), endpoint.bucket, f"recipe/{database}.dump")  # type: ignore[attr-defined]
    dump.unlink()
    return config


def opskit_restore(config: Path, database: str) -> c.Sample:
    """Run ``opskit restore latest --jobs 2`` into a new database; drop it afterwards."""
    sample = c.run_measured(c.opskit_argv(config, "restore", "latest", "--jobs", "2", "--json"),
                            env=c.opskit_env(), cwd=config.parent)
    result = json.loads(sample.stdout)
    restored = result.get("database") or f"{database}_restore_"
    c.drop_databases_like(restored if result.get("database") else f"{database}_restore_")
    phases = result.get("phases") or {}
    sample.extra = {k: float(v) for k, v in phases.items() if isinstance(v, int | float)}
    return sample


def recipe(database: str, workdir: Path, endpoint: c.S3Endpoint) -> c.Sample:
    """Download the ``-Fc`` dump, create a database, ``pg_restore -d`` into it serially; drop it after."""
    dump = workdir / "download.dump"
    target = f"{database}_recipe"
    c.drop_database(target)
    client = endpoint.client()
    download = c.timed(lambda: client.download_file(endpoint.bucket, f"recipe/{database}.dump", str(dump)))  # type: ignore[attr-defined]

    def create() -> None:
        with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{target}"')

    created = c.timed(create)
    restored = c.run_measured(["pg_restore", "-h", c.PG_HOST, "-U", c.PG_USER, "-d", target, str(dump)],
                              capture=False)
    dump.unlink()
    c.drop_database(target)
    return c.Sample(download.seconds + created.seconds + restored.seconds, 0,
                    {"download": download.seconds, "pg_restore": restored.seconds})


def main() -> None:
    args = c.database_arguments(__doc__)

    c.print_machine(c.machine())
    main_db = c.ensure_pgbench_database(args.scale, args.text_mib)
    rss_db = c.ensure_pgbench_database(args.rss_scale, args.text_mib)
    print(f"database: {main_db} ({c.fmt_bytes(c.database_size(main_db))}), "
          f"rss comparison: {rss_db} ({c.fmt_bytes(c.database_size(rss_db))}); {args.runs} run(s) each", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="opskit-bench-restore-"))
    samples: dict[str, list[c.Sample]] = {"opskit restore --jobs 2": [], "recipe: download + pg_restore -d": []}
    small: list[c.Sample] = []
    try:
        with c.moto_server() as endpoint:
            config = prepare(main_db, workdir / "main", endpoint)
            small_config = prepare(rss_db, workdir / "small", endpoint)
            for run in range(args.runs):
                print(f"  run {run + 1}/{args.runs}", flush=True)
                samples["recipe: download + pg_restore -d"].append(recipe(main_db, workdir, endpoint))
                samples["opskit restore --jobs 2"].append(opskit_restore(config, main_db))
                small.append(opskit_restore(small_config, rss_db))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        c.drop_databases_like(f"{main_db}_restore_")
        c.drop_databases_like(f"{rss_db}_restore_")
    report({k: c.median(v) for k, v in samples.items()}, c.median(small), args)


def report(results: dict[str, c.Sample], small: c.Sample, args: argparse.Namespace) -> None:
    """Print the results table and the targets table."""
    opskit = results["opskit restore --jobs 2"]
    recipe_s = results["recipe: download + pg_restore -d"]
    print(f"\nrestore from S3, pgbench -s {args.scale}, median of {args.runs}:")
    rows = [[name, f"{s.seconds:.2f}", f"{s.seconds / recipe_s.seconds:.2f}",
             ", ".join(f"{k} {v:.2f}" for k, v in s.extra.items()),
             c.fmt_bytes(s.peak_rss) if s.peak_rss else "-"] for name, s in results.items()]
    rows.append([f"opskit restore --jobs 2 at -s {args.rss_scale}", f"{small.seconds:.2f}", "-",
                 ", ".join(f"{k} {v:.2f}" for k, v in small.extra.items()), c.fmt_bytes(small.peak_rss)])
    c.print_table(["case", "wall s", "x recipe", "phases (s)", "peak RSS"], rows)
    spread = abs(opskit.peak_rss - small.peak_rss) / max(small.peak_rss, 1)
    print("\ntargets:")
    c.print_table(["target", "measured", "limit", "verdict"], [
        ["wall, opskit / recipe", f"{opskit.seconds / recipe_s.seconds:.2f}", "<= 0.75",
         c.verdict(opskit.seconds / recipe_s.seconds, TARGETS["vs_recipe"])],
        [f"peak RSS spread, -s {args.rss_scale} vs -s {args.scale}", f"{spread:.2f}", "<= 0.15",
         c.verdict(spread, TARGETS["rss_flat"])],
    ])


if __name__ == "__main__":
    main()
