"""How the cost of a backup and a restore grows with the database: wall time and peak RSS per size.

For each ``--scales`` (GB on disk of ``bench/dataset.py``'s production-like data), ``--runs``
times, interleaved: the floor ``pg_dump -Fc -Z0 > /dev/null``, ``opskit backup now`` into a
moto S3 server, and ``opskit restore latest --jobs 2`` from it. Prints a Markdown table
(medians: wall seconds, seconds per GB of plain dump, opskit's peak RSS) and, when
matplotlib is importable, writes a PNG plot (``--plot``, default docs/benchmarks-scaling.png).

Wall time should grow linearly with size (constant seconds per GB) and peak RSS stay flat
(<= 200 MiB): every stage moves bounded chunks.

Usage: ``python bench/scaling.py [--scales 0.5 2] [--runs 1] [--plot PATH]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import _common as c
import dataset
from backup import floor, opskit_backup
from restore import opskit_restore


def measure(scale: float, runs: int, workdir: Path, endpoint: c.S3Endpoint) -> dict[str, float]:
    """Return the medians at ``scale``: sizes, floor / backup / restore wall seconds, peak RSS of both."""
    database = dataset.ensure(scale)
    config = c.write_config(workdir, database, "s3", endpoint)
    floors, backups, restores = [], [], []
    for run in range(runs):
        print(f"  scale {scale:g}: run {run + 1}/{runs}", flush=True)
        c.checkpoint()
        floors.append(floor(database))
        c.checkpoint()
        backups.append(opskit_backup(config, workdir, None, database))
        c.checkpoint()
        # One backup stays for the restore; opskit_backup deletes nothing on S3 when given no endpoint.
        restores.append(opskit_restore(config, database, jobs=2))
        c.empty_bucket(endpoint)
    backup_m, restore_m, floor_m = c.median(backups), c.median(restores), c.median(floors)
    return {
        "scale": scale,
        "disk": float(c.database_size(database)),
        "plain": backup_m.extra["plain"],
        "stored": backup_m.extra["stored"],
        "floor": floor_m.seconds,
        "backup": backup_m.seconds,
        "restore": restore_m.seconds,
        "backup_rss": float(backup_m.peak_rss),
        "restore_rss": float(restore_m.peak_rss),
    }


def plot(rows: list[dict[str, float]], path: Path) -> str:
    """Write the wall-time and peak-RSS plot to ``path``; return what was done (or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install matplotlib)"
    sizes = [r["disk"] / 1e9 for r in rows]
    fig, (wall, rss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("floor", "floor: pg_dump -Z0 > /dev/null"),
        ("backup", "opskit backup -> S3"),
        ("restore", "opskit restore --jobs 2"),
    ):
        wall.plot(sizes, [r[key] for r in rows], marker="o", label=label)
    wall.set_xlabel("database on disk (GB)")
    wall.set_ylabel("wall time (s)")
    wall.set_xlim(left=0)
    wall.set_ylim(bottom=0)
    wall.legend()
    wall.set_title("wall time")
    for key, label in (("backup_rss", "opskit backup"), ("restore_rss", "opskit restore --jobs 2")):
        rss.plot(sizes, [r[key] / c.MiB for r in rows], marker="o", label=label)
    rss.axhline(200, color="grey", linestyle="--", label="200 MiB limit")
    rss.set_xlabel("database on disk (GB)")
    rss.set_ylabel("peak RSS (MiB)")
    rss.set_xlim(left=0)
    rss.set_ylim(0, 250)
    rss.legend()
    rss.set_title("opskit's peak RSS")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"plot written to {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 2.0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=c.REPO_ROOT / "docs" / "benchmarks-scaling.png")
    args = parser.parse_args()
    c.print_machine(c.machine())
    workdir = Path(tempfile.mkdtemp(prefix="opskit-bench-scaling-"))
    rows = []
    try:
        with c.moto_server() as endpoint:
            for scale in args.scales:
                rows.append(measure(scale, args.runs, workdir / str(scale), endpoint))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nscaling, median of {args.runs}:")
    c.print_table(
        [
            "on disk",
            "plain dump",
            "floor s",
            "backup s",
            "restore s",
            "backup s/GB",
            "restore s/GB",
            "backup RSS",
            "restore RSS",
        ],
        [
            [
                c.fmt_bytes(r["disk"]),
                c.fmt_bytes(r["plain"]),
                f"{r['floor']:.2f}",
                f"{r['backup']:.2f}",
                f"{r['restore']:.2f}",
                f"{r['backup'] / (r['disk'] / 1e9):.2f}",
                f"{r['restore'] / (r['disk'] / 1e9):.2f}",
                c.fmt_bytes(r["backup_rss"]),
                c.fmt_bytes(r["restore_rss"]),
            ]
            for r in rows
        ],
    )
    print(json.dumps(rows))
    print(plot(rows, args.plot))


if __name__ == "__main__":
    main()
