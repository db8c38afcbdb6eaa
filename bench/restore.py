"""Benchmark ``opskit restore`` from S3 against ``pg_restore`` (serial and ``-j 2``), and PostgreSQL alone.

On a cached database (``bench/dataset.py``'s production-like data by default, ``--scale`` GB
on disk; ``pgbench -i -s SCALE`` with ``--data pgbench``), one backup is taken into a moto S3
server (untimed), and the common recipe's ``pg_dump -Fc`` file is uploaded next to it. Then,
``--runs`` times each, interleaved, with a CHECKPOINT before every case (median and spread):

- ``opskit restore --jobs 2``  one streamed read (both sha256 checked): schema from the TOC,
                               every table's COPY data split over 2 connections, indexes with
                               ``pg_restore --section=post-data -j 2``, then every table's row
                               count (as the COPYs reported it) compared with the manifest
- ``opskit restore --jobs 1``  the same read streamed into one serial ``pg_restore``, then the
                               row counts
- ``recipe``                   boto3 ``download_file`` of the ``-Fc`` dump, ``CREATE DATABASE``,
                               ``pg_restore -d`` (serial)
- ``pg_restore -j 2``          ``CREATE DATABASE``, ``pg_restore -j 2 -d`` from the local file
                               (no download): the baseline of issue 19
- ``floor``                    PostgreSQL alone: the schema, then each table's rows from two
                               local plain files by two ``psql`` COPYs at once, then
                               ``pg_restore --section=post-data -j 2``; no download,
                               decompression or checks

Where the CPU went is printed per case: opskit, pg_restore and psql processes, and the
database's backends by application (``opskit restore`` = the loader's COPYs, ``pg_restore``
= schema and index builds), from ``/proc/<pid>/stat``, and opskit's own CPU per stage as the
restore reports it (``--json`` ``cpu``): download, both sha256 passes, age, zstd, the hand-off to
pg_restore, the thread cutting its COPY text, the threads writing the rows, other threads.

Targets (issue 19): ``opskit restore --jobs 2`` wall <= 0.8x ``pg_restore -j 2`` from a local
file and <= 1.1x the floor; opskit's own peak RSS flat (within 15%) between ``--rss-scale``
and ``--scale``, and <= 200 MiB.

Usage: ``python bench/restore.py [--data prod|pgbench] [--scale 0.5] [--rss-scale 0.1] [--runs 3] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

import _common as c
import psycopg

from opskit.pg import toc as dump_toc
from opskit.pg.copy_loader import ScriptSplitter

TARGETS = {"vs_pg_restore_j2": 0.8, "vs_floor": 1.1, "rss_flat": 0.15, "rss": 200 * c.MiB}
JOBS_2 = "opskit restore --jobs 2"
JOBS_1 = "opskit restore --jobs 1"
RECIPE = "recipe: download + pg_restore -d"
FLOOR = "floor: PostgreSQL alone, 2 COPYs at once"
PG_RESTORE_J2 = "pg_restore -j 2 -d from a local file"


def prepare(database: str, workdir: Path, endpoint: c.S3Endpoint) -> Path:
    """Back up ``database`` with opskit and upload a ``pg_dump -Fc`` of it; return the opskit config.

    The dump stays in ``workdir`` for the floor case.
    """
    config = c.write_config(workdir, database, "s3", endpoint)
    c.run_measured(c.opskit_argv(config, "backup", "now"), env=c.opskit_env(), cwd=workdir)
    dump = workdir / "x.dump"
    c.run_measured(["pg_dump", "-Fc", "-h", c.PG_HOST, "-U", c.PG_USER, "-f", str(dump), database], capture=False)
    endpoint.client().upload_file(str(dump), endpoint.bucket, f"recipe/{database}.dump")  # type: ignore[attr-defined]
    return config


def split_for_floor(dump: Path, workdir: Path) -> list[tuple[bytes, list[Path]]]:
    """Write each table's COPY rows into two plain files, blocks alternating (untimed).

    Returns (COPY statement, [file, file]) per table, in archive order.
    """
    toc = dump_toc.parse(dump.read_bytes())
    pairs: dict[bytes, list[Path]] = {}
    blocks: dict[bytes, int] = {}
    outs: dict[Path, BinaryIO] = {}

    def write_block(statement: bytes, rows: bytes) -> None:
        pair = pairs.setdefault(statement, [workdir / f"floor-{len(pairs)}-{half}.copy" for half in (0, 1)])
        blocks[statement] = blocks.get(statement, 0) + 1
        path = pair[blocks[statement] % 2]
        if path not in outs:
            outs[path] = path.open("wb")
        outs[path].write(rows)

    splitter = ScriptSplitter([e.copy_stmt for e in toc.data_entries() if e.copy_stmt], write_block, lambda sql: None)
    with subprocess.Popen(["pg_restore", "--section=data", "-f", "-", str(dump)], stdout=subprocess.PIPE) as script:
        assert script.stdout is not None
        for chunk in iter(lambda: script.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            splitter.feed(chunk)
    splitter.finish()
    for out in outs.values():
        out.close()
    for pair in pairs.values():
        for path in pair:
            path.touch()
    return list(pairs.items())


def floor(database: str, dump: Path, tables: list[tuple[bytes, list[Path]]]) -> c.Sample:
    """PostgreSQL alone: schema, each table's two row files by two psql COPYs at once, then indexes."""
    target = f"{database}_floor"
    c.drop_database(target)
    connect = ["-h", c.PG_HOST, "-U", c.PG_USER, "-d", target]

    def restore() -> None:
        with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{target}"')
        subprocess.run(["pg_restore", *connect, "--section=pre-data", str(dump)], check=True)
        for statement, pair in tables:
            copies = []
            for path in pair:
                with path.open("rb") as rows:
                    copies.append(
                        subprocess.Popen(["psql", *connect, "-q", "-c", statement.decode().strip()], stdin=rows)
                    )
            for copy in copies:
                if copy.wait() != 0:
                    raise SystemExit(f"floor: psql COPY failed for {statement!r}")
        subprocess.run(["pg_restore", *connect, "--section=post-data", "--jobs=2", str(dump)], check=True)

    sampler = c.CpuSampler(target)
    sampler.start(0)  # no process tree of its own: the psql and pg_restore children are not ours to find
    sample = c.timed(restore)
    sample.cpu = sampler.stop()
    c.drop_database(target)
    return sample


def opskit_restore(config: Path, database: str, jobs: int = 2) -> c.Sample:
    """Run ``opskit restore latest --jobs N`` into a new database; drop it afterwards."""
    sample = c.run_measured(
        c.opskit_argv(config, "restore", "latest", "--jobs", str(jobs), "--json"),
        env=c.opskit_env(),
        cwd=config.parent,
        cpu_database=f"{database}_restore_",
    )
    result = json.loads(sample.stdout)
    restored = result.get("database") or f"{database}_restore_"
    c.drop_databases_like(restored if result.get("database") else f"{database}_restore_")
    phases = result.get("phases") or {}
    sample.extra = {k: float(v) for k, v in phases.items() if isinstance(v, int | float)}
    # opskit's own stages, as the restore reports them (--json "cpu"), kept apart from the phases.
    stages = result.get("cpu") or {}
    sample.extra |= {f"stage {k}": float(v) for k, v in stages.items() if isinstance(v, int | float)}
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
    restored = c.run_measured(
        ["pg_restore", "-h", c.PG_HOST, "-U", c.PG_USER, "-d", target, str(dump)], capture=False, cpu_database=target
    )
    dump.unlink()
    c.drop_database(target)
    return c.Sample(
        download.seconds + created.seconds + restored.seconds,
        0,
        {"download": download.seconds, "pg_restore": restored.seconds},
        cpu=restored.cpu,
    )


def pg_restore_jobs(database: str, dump: Path, jobs: int = 2) -> c.Sample:
    """``CREATE DATABASE`` and ``pg_restore -j jobs -d`` from the local ``-Fc`` file; drop it after."""
    target = f"{database}_pgrj"
    c.drop_database(target)
    started = c.timed(lambda: _create(target))
    restored = c.run_measured(
        ["pg_restore", "-h", c.PG_HOST, "-U", c.PG_USER, "-j", str(jobs), "-d", target, str(dump)],
        capture=False,
        cpu_database=target,
    )
    c.drop_database(target)
    return c.Sample(started.seconds + restored.seconds, 0, {}, cpu=restored.cpu)


def _create(name: str) -> None:
    with psycopg.connect(c.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    args = c.database_arguments(__doc__)

    c.print_machine(c.machine())
    main_db = c.ensure_database(args, args.scale)
    rss_db = c.ensure_database(args, args.rss_scale)
    print(
        f"database: {main_db} ({c.fmt_bytes(c.database_size(main_db))}), "
        f"rss comparison: {rss_db} ({c.fmt_bytes(c.database_size(rss_db))}); {args.runs} run(s) each",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="opskit-bench-restore-"))
    cases = (JOBS_2, JOBS_1, RECIPE, PG_RESTORE_J2, FLOOR)
    samples: dict[str, list[c.Sample]] = {case: [] for case in cases}
    small: list[c.Sample] = []
    try:
        with c.moto_server() as endpoint:
            config = prepare(main_db, workdir / "main", endpoint)
            small_config = prepare(rss_db, workdir / "small", endpoint)
            tables = split_for_floor(workdir / "main" / "x.dump", workdir / "main")
            for run in range(args.runs):
                print(f"  run {run + 1}/{args.runs}", flush=True)
                # A restore writes more WAL than max_wal_size: start every case from a checkpoint.
                c.checkpoint()
                samples[RECIPE].append(recipe(main_db, workdir, endpoint))
                c.checkpoint()
                samples[JOBS_2].append(opskit_restore(config, main_db, jobs=2))
                c.checkpoint()
                samples[FLOOR].append(floor(main_db, workdir / "main" / "x.dump", tables))
                c.checkpoint()
                samples[PG_RESTORE_J2].append(pg_restore_jobs(main_db, workdir / "main" / "x.dump"))
                c.checkpoint()
                samples[JOBS_1].append(opskit_restore(config, main_db, jobs=1))
                c.checkpoint()
                small.append(opskit_restore(small_config, rss_db, jobs=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        c.drop_databases_like(f"{main_db}_restore_")
        c.drop_databases_like(f"{rss_db}_restore_")
        c.drop_database(f"{main_db}_floor")
        c.drop_database(f"{main_db}_pgrj")
    report(samples, small, args)


def _phases(sample: c.Sample) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sample.extra.items() if not k.startswith("stage "))


def report(samples: dict[str, list[c.Sample]], small_runs: list[c.Sample], args: argparse.Namespace) -> None:
    """Print the results table, where the CPU went, and the targets table."""
    results = {name: c.median(values) for name, values in samples.items()}
    small = c.median(small_runs)
    opskit = results[JOBS_2]
    base = results[PG_RESTORE_J2]
    floor_s = results[FLOOR]
    print(f"\nrestore, {c.describe_data(args)}, median of {args.runs} (spread = min-max wall):")
    rows = [
        [
            name,
            f"{s.seconds:.2f}",
            f"{s.seconds / base.seconds:.2f}",
            f"{s.seconds / floor_s.seconds:.2f}",
            c.spread(samples[name]),
            _phases(s),
            c.fmt_bytes(s.peak_rss) if s.peak_rss else "-",
        ]
        for name, s in results.items()
    ]
    rows.append(
        [
            f"{JOBS_2} at scale {args.rss_scale:g}",
            f"{small.seconds:.2f}",
            "-",
            "-",
            c.spread(small_runs),
            _phases(small),
            c.fmt_bytes(small.peak_rss),
        ]
    )
    c.print_table(["case", "wall s", "x pg_restore -j 2", "x floor", "spread s", "phases (s)", "peak RSS"], rows)
    print("\nwhere the CPU went (medians):")
    for name, s in results.items():
        stages = {k.removeprefix("stage "): v for k, v in s.extra.items() if k.startswith("stage ")}
        c.print_cpu(name, s, stages)
    rss_spread = abs(opskit.peak_rss - small.peak_rss) / max(small.peak_rss, 1)
    checks = [
        (f"wall, {JOBS_2} / pg_restore -j 2 (local file)", opskit.seconds / base.seconds, TARGETS["vs_pg_restore_j2"]),
        (f"wall, {JOBS_2} / floor", opskit.seconds / floor_s.seconds, TARGETS["vs_floor"]),
        (f"peak RSS spread, scale {args.rss_scale:g} vs {args.scale:g}", rss_spread, TARGETS["rss_flat"]),
    ]
    table = [[name, f"{value:.2f}", f"<= {limit}", c.verdict(value, limit)] for name, value, limit in checks]
    table.append(
        [f"peak RSS, {JOBS_2}", c.fmt_bytes(opskit.peak_rss), "<= 200 MiB", c.verdict(opskit.peak_rss, TARGETS["rss"])]
    )
    print(
        f"\n(reference) wall, {JOBS_2} / recipe (download + serial pg_restore): "
        f"{opskit.seconds / results[RECIPE].seconds:.2f}"
    )
    print("\ntargets:")
    c.print_table(["target", "measured", "limit", "verdict"], table)


if __name__ == "__main__":
    main()
