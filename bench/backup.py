"""Benchmark ``opskit backup now`` against the common recipe and against pg_dump alone.

Cases, each run ``--runs`` times on a cached database (median shown, with the spread):
``bench/dataset.py``'s production-like data by default (``--scale`` GB on disk), or
``pgbench -i -s SCALE`` with ``--data pgbench``.

- ``opskit -> local``     ``opskit backup now`` into a ``file://`` storage
- ``opskit -> S3``        ``opskit backup now`` into a moto S3 server on loopback
- ``opskit -> S3 + age``  the same with age encryption to one recipient
- ``recipe (a)``          ``pg_dump -Fc -f x.dump`` then boto3 ``upload_file`` to the same server
- ``floor (b)``           ``pg_dump -Fc -Z0 > /dev/null``: reading the data, nothing else

Where the CPU went is printed per case: opskit's process, pg_dump, and pg_dump's backend
(from ``/proc/<pid>/stat``, the backend's pid from ``pg_stat_activity``), moto's server in the
S3 cases (an object store on loopback takes its CPU from the same 2 cores), and opskit's own
stages as its manifest records them (``extra.cpu``: reading the pipe, both sha256 passes,
zstd and age, the storage writes).

Targets (issue 19): opskit wall <= 1.25x the floor (b); stored size <= 0.85x (a)'s dump;
opskit's own peak RSS <= 200 MiB and within 15% between ``--rss-scale`` and ``--scale``;
encrypted / unencrypted wall <= 1.15x. The wall against the recipe (a) is reported.

Usage: ``python bench/backup.py [--data prod|pgbench] [--scale 0.5] [--rss-scale 0.1] [--runs 3]
[--level N] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import _common as c

TARGETS = {"vs_floor": 1.25, "size": 0.85, "rss": 200 * c.MiB, "rss_flat": 0.15, "age": 1.15}


def opskit_backup(config: Path, workdir: Path, endpoint: c.S3Endpoint | None, database: str) -> c.Sample:
    """Run one ``opskit backup now --json``; return its time, peak RSS, CPU and stored size; delete the backup."""
    sample = c.run_measured(
        c.opskit_argv(config, "backup", "now", "--json"),
        env=c.opskit_env(),
        cwd=workdir,
        cpu_database=database,
        servers={"moto": endpoint.pid} if endpoint is not None else None,
    )
    manifest = json.loads(sample.stdout)
    sample.extra["stored"] = float(manifest["artifacts"][0]["size"])
    sample.extra["plain"] = float(manifest["artifacts"][0]["plain_size"])
    # opskit's own stages, as the manifest records them for the db artifact.
    for stage, seconds in (manifest.get("extra", {}).get("cpu") or {}).items():
        sample.extra[f"stage {stage}"] = float(seconds)
    shutil.rmtree(workdir / "backups", ignore_errors=True)
    if endpoint is not None:
        c.empty_bucket(endpoint)
    return sample


def recipe(database: str, workdir: Path, endpoint: c.S3Endpoint) -> c.Sample:
    """Run the common recipe: ``pg_dump -Fc -f x.dump``, then upload the file with boto3."""
    dump = workdir / "x.dump"
    argv = ["pg_dump", "-Fc", "-h", c.PG_HOST, "-U", c.PG_USER, "-f", str(dump), database]
    dumped = c.run_measured(argv, capture=False, cpu_database=database)
    client = endpoint.client()
    moto_before = c.server_cpu(endpoint.pid)
    uploaded = c.timed(lambda: client.upload_file(str(dump), endpoint.bucket, "recipe/x.dump"))  # type: ignore[attr-defined]
    moto = c.server_cpu(endpoint.pid) - moto_before
    size = dump.stat().st_size
    dump.unlink()
    c.empty_bucket(endpoint)
    return c.Sample(
        dumped.seconds + uploaded.seconds,
        0,
        {"stored": float(size), "dump": dumped.seconds, "upload": uploaded.seconds},
        cpu=dumped.cpu | {"moto": moto},
    )


def floor(database: str) -> c.Sample:
    """Run ``pg_dump -Fc -Z0`` into /dev/null: the time to read the data out of PostgreSQL."""
    argv = ["pg_dump", "-Fc", "-Z0", "-h", c.PG_HOST, "-U", c.PG_USER, database]
    return c.run_measured(argv, capture=False, cpu_database=database)


def run_cases(
    database: str, runs: int, workdir: Path, endpoint: c.S3Endpoint, with_baselines: bool, level: int | None = None
) -> dict[str, list[c.Sample]]:
    """Run every case ``runs`` times, interleaved (so a noisy neighbour hits all cases alike); return the samples."""
    identity, recipient = c.new_identity(workdir / "keys")
    configs = {
        "opskit -> local": (c.write_config(workdir / "local", database, "local", level=level), None),
        "opskit -> S3": (c.write_config(workdir / "s3", database, "s3", endpoint, level=level), endpoint),
        "opskit -> S3 + age": (
            c.write_config(workdir / "age", database, "s3", endpoint, [recipient], identity, level=level),
            endpoint,
        ),
    }
    samples: dict[str, list[c.Sample]] = {}
    for run in range(runs):
        print(f"  run {run + 1}/{runs} on {database}", flush=True)
        if with_baselines:
            samples.setdefault("floor (b): pg_dump -Fc -Z0 > /dev/null", []).append(floor(database))
            samples.setdefault("recipe (a): pg_dump -Fc -f + upload_file", []).append(
                recipe(database, workdir, endpoint)
            )
        for name, (config, ep) in configs.items():
            if not with_baselines and name != "opskit -> S3":
                continue
            samples.setdefault(name, []).append(opskit_backup(config, config.parent, ep, database))
    return samples


def main() -> None:
    args = c.database_arguments(__doc__, extra=_level_option)

    facts = c.machine()
    c.print_machine(facts)
    main_db = c.ensure_database(args, args.scale)
    rss_db = c.ensure_database(args, args.rss_scale)
    print(
        f"database: {main_db} ({c.fmt_bytes(c.database_size(main_db))}), "
        f"rss comparison: {rss_db} ({c.fmt_bytes(c.database_size(rss_db))}); {args.runs} run(s) each",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="opskit-bench-backup-"))
    try:
        with c.moto_server() as endpoint:
            samples = run_cases(main_db, args.runs, workdir, endpoint, with_baselines=True, level=args.level)
            small = run_cases(rss_db, args.runs, workdir / "small", endpoint, with_baselines=False, level=args.level)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        subprocess.run(["sync"], check=False)
    report(samples, {name: c.median(values) for name, values in small.items()}, args)


def _level_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", type=int, help="opskit's [compression] level (default: opskit's default)")


def report(samples: dict[str, list[c.Sample]], small: dict[str, c.Sample], args: argparse.Namespace) -> None:
    """Print the results table, where the CPU went, and the targets table."""
    results = {name: c.median(values) for name, values in samples.items()}
    floor_s = results["floor (b): pg_dump -Fc -Z0 > /dev/null"]
    recipe_s = results["recipe (a): pg_dump -Fc -f + upload_file"]
    print(f"\nbackup, {c.describe_data(args)}, median of {args.runs} (spread = min-max wall):")
    rows = []
    for name, s in results.items():
        stored = s.extra.get("stored")
        rows.append(
            [
                name,
                f"{s.seconds:.2f}",
                f"{s.seconds / recipe_s.seconds:.2f}",
                f"{s.seconds / floor_s.seconds:.2f}",
                c.spread(samples[name]),
                c.fmt_bytes(stored) if stored else "-",
                c.fmt_bytes(s.peak_rss) if s.peak_rss else "-",
            ]
        )
    c.print_table(["case", "wall s", "x recipe (a)", "x floor (b)", "spread s", "stored", "peak RSS"], rows)
    print(f"  recipe (a) split: pg_dump {recipe_s.extra['dump']:.2f} s + upload {recipe_s.extra['upload']:.2f} s")
    print("\nwhere the CPU went (medians):")
    for name, s in results.items():
        stages = {k.removeprefix("stage "): v for k, v in s.extra.items() if k.startswith("stage ")}
        c.print_cpu(name, s, stages)

    s3 = results["opskit -> S3"]
    age = results["opskit -> S3 + age"]
    small_s3 = small["opskit -> S3"]
    rss_spread = abs(s3.peak_rss - small_s3.peak_rss) / max(small_s3.peak_rss, 1)
    print(f"\n(reference) wall, opskit -> S3 / recipe (a): {s3.seconds / recipe_s.seconds:.2f}")
    checks = [
        ("wall, opskit -> S3 / floor (b)", s3.seconds / floor_s.seconds, TARGETS["vs_floor"]),
        (
            "wall, opskit -> local / floor (b)",
            results["opskit -> local"].seconds / floor_s.seconds,
            TARGETS["vs_floor"],
        ),
        ("stored size / recipe (a) dump", s3.extra["stored"] / recipe_s.extra["stored"], TARGETS["size"]),
        ("wall, encrypted / unencrypted (S3)", age.seconds / s3.seconds, TARGETS["age"]),
        (f"peak RSS spread, scale {args.rss_scale:g} vs {args.scale:g}", rss_spread, TARGETS["rss_flat"]),
    ]
    print("\ntargets:")
    table = [[name, f"{value:.2f}", f"<= {limit}", c.verdict(value, limit)] for name, value, limit in checks]
    for name, s in (
        ("peak RSS, opskit -> S3", s3),
        ("peak RSS, opskit -> S3 + age", age),
        ("peak RSS, opskit -> local", results["opskit -> local"]),
        (f"peak RSS, opskit -> S3 at scale {args.rss_scale:g}", small_s3),
    ):
        table.append([name, c.fmt_bytes(s.peak_rss), "<= 200 MiB", c.verdict(s.peak_rss, TARGETS["rss"])])
    c.print_table(["target", "measured", "limit", "verdict"], table)


if __name__ == "__main__":
    main()
