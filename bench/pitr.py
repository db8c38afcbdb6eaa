"""Point-in-time recovery against pgBackRest: base backup, WAL streaming lag, PITR restore (issue 16).

Targets (from the issue):

- case 1: ``opskit backup now --kind base`` no slower than ``pgbackrest backup --type=full``
  (zst level 3, process-max 2), and within 1.3x of ``pg_basebackup -Ft -D - -X none > /dev/null``;
- case 2: ``opskit wal stream`` keeps up with a pgbench write load: archive lag (the server's
  current LSN minus the end of the newest archived WAL, a shipped ``.partial`` counted up to the
  pages it holds, as the streamer's ``opskit_wal_archive_lag_bytes``) under one segment (16 MiB);
  the lag in whole segments is printed beside it;
- case 3: ``opskit restore --pitr --latest --start`` (base + the WAL of a pgbench run, replay
  included) within 1.2x of ``pgbackrest restore`` + server start to the end of recovery,
  and opskit's peak RSS flat in the database's size (a second, smaller cluster).

One throwaway cluster (initdb, fsync off, wal_level=replica) holds ``bench/dataset.py``'s
production-like data plus ``pgbench -i``. Its ``archive_command`` runs both archivers in turn
(``opskit wal push %p && pgbackrest archive-push %p``), so both tools see the same WAL.
pgBackRest 2.45 speaks S3 over TLS only and moto serves plain http, so pgBackRest's repo
is a posix directory and opskit's comparable storage is ``file://`` on the same disk; an
opskit base backup to moto S3 is timed beside them for information.

Usage: ``python bench/pitr.py [--scale 0.5] [--rss-scale 0.1] [--runs 3] [--pgbench-seconds 60 | --five-minutes]``;
``--quick`` checks that the script works (a tiny cluster, one run, short pgbench).
Every server the script starts is stopped and every temporary directory removed (try/finally).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import dataset
import psycopg
import zstandard

from opskit.wal import partial
from tests.pgcluster import as_postgres, free_port, run_as_postgres
from tests.wal.cluster import give_to_postgres, opskit_command

PG_BIN = "/usr/lib/postgresql/15/bin"
SEGMENT = 16 * c.MiB
STANZA = "bench"
PGBENCH_SCALE = 10


# --------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the parsed options; ``--quick`` and ``--five-minutes`` are folded into the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.5, help="GB of bench/dataset.py data (default 0.5)")
    parser.add_argument("--rss-scale", type=float, default=0.1, help="the smaller cluster for peak RSS (0.1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per case; the median is printed")
    parser.add_argument("--clients", type=int, default=2, help="pgbench clients (and threads)")
    parser.add_argument("--pgbench-seconds", type=int, default=60, help="case 3: the pgbench run whose WAL is replayed")
    parser.add_argument("--five-minutes", action="store_true", help="case 3: the issue's 5-minute pgbench run")
    parser.add_argument("--stream-seconds", type=int, default=90, help="case 2: how long pgbench writes")
    parser.add_argument("--cases", default="1,2,3", help="which cases to run (comma-separated, default 1,2,3)")
    parser.add_argument("--quick", action="store_true", help="a tiny cluster, one run, short pgbench")
    args = parser.parse_args(argv)
    if args.five_minutes:
        args.pgbench_seconds = 300
    if args.quick:
        args.scale, args.rss_scale, args.runs = 0.02, 0.01, 1
        args.pgbench_seconds, args.stream_seconds = 10, 10
    args.cases = {int(x) for x in str(args.cases).split(",") if x.strip()}
    return args


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """A throwaway archiving cluster, opskit's config and pgBackRest's, all under ``root``."""

    root: Path
    port: int
    data_dir: Path
    opskit_config: Path
    pgbackrest_config: Path
    servers: list[Path] = field(default_factory=list)

    def dsn(self, dbname: str = "postgres") -> str:
        """Return the libpq DSN of ``dbname`` on this cluster (trust auth, user postgres)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def query(self, sql: str, dbname: str = "postgres") -> Any:
        """Run ``sql`` in autocommit and return the first column of its first row (None without rows)."""
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cursor = conn.execute(sql.encode())
            row = cursor.fetchone() if cursor.description is not None else None
        return row[0] if row else None

    def pgbackrest(self, *args: str) -> list[str]:
        """Return the argv of ``pgbackrest --config=... --stanza=bench ARGS`` (run it as the server's user)."""
        return ["pgbackrest", f"--config={self.pgbackrest_config}", f"--stanza={STANZA}", *args]

    def opskit(self, *args: str) -> list[str]:
        """Return the argv of this checkout's opskit (as the bench's user) with the cluster's config."""
        return c.opskit_argv(self.opskit_config, *args)


def _settings(cluster_root: Path, port: int, archive_command: str) -> dict[str, str]:
    return {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{cluster_root}'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "on",
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": "'" + archive_command.replace("'", "''") + "'",
        "max_wal_senders": "6",
        "max_wal_size": "1GB",
        "log_line_prefix": "'%m '",
    }


def _opskit_config(root: Path, port: int, endpoint: c.S3Endpoint | None) -> str:
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    text = textwrap.dedent(
        f"""\
        [tools]
        state_dir = "{root / "state"}"

        [targets.app]
        dsn = "{dsn}"
        storages = ["local"]

        [targets.stream]
        dsn = "{dsn}"
        storages = ["streamed"]

        [storages.local]
        url = "file://{root / "opskit-repo"}"

        [storages.streamed]
        url = "file://{root / "stream-repo"}"

        [wal]
        slot = "opskit_bench"
        partial_interval = "60s"

        [compression]
        level = 3
        """
    )
    if endpoint is not None:
        text += textwrap.dedent(
            f"""
            [targets.app_s3]
            dsn = "{dsn}"
            storages = ["s3"]

            [storages.s3]
            url = "s3://{endpoint.bucket}/pitr"
            endpoint_url = "{endpoint.url}"
            region = "{c.S3_REGION}"
            access_key_id = "{c.S3_ACCESS_KEY}"
            secret_access_key = "{c.S3_SECRET_KEY}"
            """
        )
    return text


def _pgbackrest_config(root: Path, data_dir: Path, port: int) -> str:
    return textwrap.dedent(
        f"""\
        [global]
        repo1-path={root / "pgbackrest-repo"}
        repo1-retention-full=99
        log-path={root / "pgbackrest-log"}
        lock-path={root / "pgbackrest-lock"}
        spool-path={root / "pgbackrest-spool"}
        log-level-console=warn
        log-level-file=off
        compress-type=zst
        compress-level=3
        process-max=2
        start-fast=y

        [{STANZA}]
        pg1-path={data_dir}
        pg1-port={port}
        pg1-socket-path={root}
        pg1-user=postgres
        """
    )


@contextlib.contextmanager
def archiving_cluster(scale: float, seed: int, endpoint: c.S3Endpoint | None) -> Iterator[Cluster]:
    """Yield a running cluster with ``scale`` GB of dataset.py data and pgbench tables; stop and remove it after.

    Its archive_command pushes every WAL file with opskit (target ``app``) and then pgBackRest
    (stanza ``bench``, created here). Raises RuntimeError when a step fails.
    """
    root = Path(tempfile.mkdtemp(prefix="opskit-bench-pitr-", dir="/tmp"))
    os.chmod(root, 0o755)
    data_dir = root / "data"
    port = free_port()
    cluster = Cluster(root, port, data_dir, root / "opskit.toml", root / "pgbackrest.conf")
    started = False
    try:
        # Made now so they belong to postgres: the archive_command (postgres) writes in them.
        for sub in (
            "opskit-repo/app/wal",
            "state",
            "stream-repo",
            "pgbackrest-repo",
            "pgbackrest-log",
            "pgbackrest-lock",
            "pgbackrest-spool",
        ):
            (root / sub).mkdir(parents=True)
        cluster.opskit_config.write_text(_opskit_config(root, port, endpoint))
        cluster.pgbackrest_config.write_text(_pgbackrest_config(root, data_dir, port))
        give_to_postgres(root)
        run_as_postgres(
            [
                f"{PG_BIN}/initdb",
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        )
        push = " ".join([*opskit_command(), "--config", str(cluster.opskit_config), "wal", "push", "-t", "app", "%p"])
        archive_command = f"{push} && pgbackrest --config={cluster.pgbackrest_config} --stanza={STANZA} archive-push %p"
        with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in _settings(root, port, archive_command).items())
        run_as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data_dir), "-l", str(root / "server.log"), "-w", "start"])
        started = True
        run_as_postgres(cluster.pgbackrest("stanza-create"))
        load_data(cluster, scale, seed)
        yield cluster
    finally:
        for directory in [*cluster.servers, *([data_dir] if started else [])]:
            stop_server(directory)
        shutil.rmtree(root, ignore_errors=True)


def stop_server(data_dir: Path) -> None:
    """Stop the server of ``data_dir`` at once if it runs (no shutdown checkpoint: it is thrown away)."""
    if (data_dir / "postmaster.pid").exists():
        with contextlib.suppress(RuntimeError):
            run_as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data_dir), "-m", "immediate", "-w", "stop"])


def load_data(cluster: Cluster, scale: float, seed: int) -> None:
    """Build dataset.py's database ``app`` at ``scale`` GB and pgbench's tables in ``pgbench`` on the cluster."""
    began = time.perf_counter()
    cluster.query("CREATE DATABASE app")
    with psycopg.connect(cluster.dsn("app"), autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        for _label, sql in dataset.statements(scale, seed):
            conn.execute(sql.encode())
    cluster.query("CREATE DATABASE pgbench")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(PGBENCH_SCALE), cluster.dsn("pgbench")], check=True, capture_output=True
    )
    cluster.query("CHECKPOINT")
    # The load's WAL is archived before anything is timed: a backup waits for its last segment
    # to be archived, and must not wait for the load's backlog as well.
    wait_archived(cluster)
    size = sum(int(cluster.query(f"SELECT pg_database_size('{db}')")) for db in ("app", "pgbench"))
    print(
        f"  loaded {c.fmt_bytes(size)} ({scale:g} GB dataset + pgbench -s {PGBENCH_SCALE}) "
        f"in {time.perf_counter() - began:.0f} s",
        flush=True,
    )


# --------------------------------------------------------------------------- case 1: base backups


def opskit_backup(cluster: Cluster, target: str) -> c.Sample:
    """Time ``opskit backup now --kind base -t TARGET``; return the sample (opskit's own peak RSS)."""
    return c.run_measured(cluster.opskit("backup", "now", "--kind", "base", "-t", target), env=c.opskit_env())


def pgbackrest_backup(cluster: Cluster) -> c.Sample:
    """Time ``pgbackrest backup --type=full`` (zst 3, process-max 2 from its config); RSS is not measured.

    The measured process is ``runuser`` (pgBackRest must run as the server's user), so its peak is dropped.
    """
    sample = c.run_measured(as_postgres(cluster.pgbackrest("--type=full", "backup")))
    sample.peak_rss = 0
    return sample


def pg_basebackup_null(cluster: Cluster) -> c.Sample:
    """Time ``pg_basebackup -Ft -D - -X none --checkpoint=fast > /dev/null``: the floor of a base backup."""
    argv = [f"{PG_BIN}/pg_basebackup", "-d", cluster.dsn(), "-Ft", "-D", "-", "-X", "none", "--checkpoint=fast"]
    return c.run_measured(argv, capture=False)


def case_backups(cluster: Cluster, runs: int, with_s3: bool) -> dict[str, list[c.Sample]]:
    """Run every base backup ``runs`` times, interleaved (the order rotates each round); return samples by name."""
    cases = {
        "opskit base -> file://": lambda: opskit_backup(cluster, "app"),
        "pgbackrest full -> posix": lambda: pgbackrest_backup(cluster),
        "pg_basebackup > /dev/null": lambda: pg_basebackup_null(cluster),
    }
    if with_s3:
        cases["opskit base -> s3 (moto)"] = lambda: opskit_backup(cluster, "app_s3")
    samples: dict[str, list[c.Sample]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(runs):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            cluster.query("CHECKPOINT")  # untimed: no case pays for the dirty pages of the one before
            sample = cases[name]()
            samples[name].append(sample)
            print(f"  backup {name}: {sample.seconds:.1f} s", flush=True)
    return samples


# --------------------------------------------------------------------------- case 2: wal stream lag


def segment_end(name: str) -> int:
    """Return the LSN (bytes) just past WAL segment ``name`` (16 MiB segments)."""
    segno = int(name[8:16], 16) * (0x100000000 // SEGMENT) + int(name[16:24], 16)
    return (segno + 1) * SEGMENT


def newest_shipped_end(wal_dir: Path, *, partials: bool = True) -> int:
    """Return the end LSN of the newest WAL stored in ``wal_dir`` (0 when there is none).

    With ``partials``, a shipped ``<segment>.partial.zst`` counts up to the pages it holds, as
    the streamer's own archive lag counts it; without, only complete segments count.
    """
    ends = [segment_end(p.name[:24]) for p in wal_dir.glob("*.zst") if len(p.name) == 28]
    if partials:
        for path in wal_dir.glob("*.partial.zst"):
            try:
                data = zstandard.ZstdDecompressor().stream_reader(path.open("rb")).read()
            except (OSError, zstandard.ZstdError):
                continue  # replaced while read: the next sample sees the new one
            written = partial.written_bytes(io.BytesIO(data), len(data))
            if written:
                ends.append(segment_end(path.name[:24]) - SEGMENT + written)
    return max(ends, default=0)


def current_lsn(cluster: Cluster) -> int:
    """Return the server's current WAL write position in bytes."""
    return int(cluster.query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def pgbench_argv(cluster: Cluster, clients: int, seconds: int) -> list[str]:
    """Return the pgbench command line of the write load (TPC-B-like, ``clients`` clients and threads)."""
    return ["pgbench", "-n", "-c", str(clients), "-j", str(clients), "-T", str(seconds), cluster.dsn("pgbench")]


def case_stream(cluster: Cluster, clients: int, seconds: int) -> dict[str, float]:
    """Stream WAL with ``opskit wal stream`` while pgbench writes; sample the archive lag each second.

    Returns max and median lag (bytes), the WAL written, the stream's peak RSS, and how long
    the stream took to catch up (lag under one segment) after pgbench stopped.
    """
    wal_dir = cluster.root / "stream-repo" / "stream" / "wal"
    # Its log goes to a file: a pipe nobody reads would fill up and stall the streamer.
    log_path = cluster.root / "wal-stream.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        stream = subprocess.Popen(
            cluster.opskit("wal", "stream", "-t", "stream"),
            env=c.opskit_env(),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    lags: list[int] = []
    segment_lags: list[int] = []
    peak = 0
    try:
        deadline = time.monotonic() + 60
        while not cluster.query("SELECT active FROM pg_replication_slots WHERE slot_name = 'opskit_bench'"):
            if stream.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"opskit wal stream did not attach: {log_path.read_text()[-1000:]}")
            time.sleep(0.2)
        start = current_lsn(cluster)
        floor = start - start % SEGMENT  # what was written before the stream started is not its lag
        load = subprocess.Popen(pgbench_argv(cluster, clients, seconds), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while load.poll() is None:
            now = current_lsn(cluster)
            lags.append(max(0, now - max(floor, newest_shipped_end(wal_dir))))
            segment_lags.append(max(0, now - max(floor, newest_shipped_end(wal_dir, partials=False))))
            peak = max(peak, c._vm_hwm(stream.pid))
            time.sleep(1)
        if load.returncode != 0:
            raise RuntimeError(f"pgbench failed: {load.stderr.read().decode()[-500:] if load.stderr else ''}")
        written = current_lsn(cluster) - start
        stopped = time.monotonic()
        while current_lsn(cluster) - max(floor, newest_shipped_end(wal_dir)) >= SEGMENT:
            if time.monotonic() - stopped > 120:
                break
            time.sleep(0.2)
        catch_up = time.monotonic() - stopped
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(30)
        except subprocess.TimeoutExpired:
            stream.kill()
            stream.wait()
        with contextlib.suppress(psycopg.Error):
            cluster.query("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active")
            time.sleep(0.5)
            cluster.query("SELECT pg_drop_replication_slot('opskit_bench')")
    lags.sort()
    return {
        "max_lag": float(max(lags, default=0)),
        "median_lag": float(lags[len(lags) // 2] if lags else 0),
        "max_segment_lag": float(max(segment_lags, default=0)),
        "samples": float(len(lags)),
        "written": float(written),
        "seconds": float(seconds),
        "peak_rss": float(peak),
        "catch_up": catch_up,
    }


# --------------------------------------------------------------------------- case 3: PITR restore


def wait_archived(cluster: Cluster) -> None:
    """Close the current segment and wait until the archive_command has stored it (and all before it).

    Raises RuntimeError after 30 minutes.
    """
    last = str(cluster.query("SELECT pg_walfile_name(pg_switch_wal())"))
    deadline = time.monotonic() + 1800
    while True:
        archived = cluster.query("SELECT last_archived_wal FROM pg_stat_archiver")
        if archived is not None and str(archived) >= last:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{last} was not archived within 30 minutes (last {archived})")
        time.sleep(0.5)


def write_load_and_archive(cluster: Cluster, clients: int, seconds: int) -> dict[str, float]:
    """Run pgbench for ``seconds``, then close the segment and wait until both archivers have it.

    Returns the WAL written (bytes) and the seconds the archive_command needed after pgbench stopped.
    """
    start = current_lsn(cluster)
    subprocess.run(pgbench_argv(cluster, clients, seconds), check=True, capture_output=True)
    written = current_lsn(cluster) - start
    stopped = time.monotonic()
    wait_archived(cluster)
    return {"written": float(written), "archive_drain": time.monotonic() - stopped}


def restore_command_opskit() -> str:
    """Return how the recovered server (postgres) runs this checkout's opskit in its restore_command."""
    return " ".join(opskit_command())


def opskit_restore(cluster: Cluster, pgdata: Path) -> c.Sample:
    """Time ``opskit restore --pitr --latest --pgdata D --start`` (extract + replay to the promotion).

    The server's restore_command runs this checkout's opskit as postgres. The sample's extras
    are opskit's own phases (extract, recovery); the server is stopped after.
    """
    cluster.servers.append(pgdata)
    argv = cluster.opskit(
        "restore",
        "--pitr",
        "--latest",
        "-t",
        "app",
        "--pgdata",
        str(pgdata),
        "--start",
        "--opskit-command",
        restore_command_opskit(),
        "--json",
    )
    try:
        sample = c.run_measured(argv, env=c.opskit_env())
        with contextlib.suppress(ValueError, AttributeError):
            phases = json.loads(sample.stdout).get("phases", {})
            sample.extra = {k: float(v) for k, v in phases.items()}
        return sample
    finally:
        stop_server(pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)


def pgbackrest_restore(cluster: Cluster, pgdata: Path) -> c.Sample:
    """Time ``pgbackrest restore`` + ``pg_ctl start`` until the server leaves recovery; stop it after."""
    cluster.servers.append(pgdata)
    began = time.perf_counter()
    try:
        pgdata.mkdir(mode=0o700)
        give_to_postgres(pgdata)
        run_as_postgres(cluster.pgbackrest(f"--pg1-path={pgdata}", "--archive-mode=off", "restore"), timeout=3600)
        restored = time.perf_counter() - began
        port = free_port()
        options = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={pgdata}"
        run_as_postgres(
            [
                f"{PG_BIN}/pg_ctl",
                "-D",
                str(pgdata),
                "-o",
                options,
                "-l",
                str(pgdata / "recovery.log"),
                "-w",
                "-t",
                "3600",
                "start",
            ],
            timeout=3700,
        )
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    break
            except psycopg.OperationalError:
                pass
            if not (pgdata / "postmaster.pid").exists():
                raise RuntimeError(
                    f"pgBackRest's restored server stopped: {(pgdata / 'recovery.log').read_text()[-800:]}"
                )
            time.sleep(0.2)
        elapsed = time.perf_counter() - began
        return c.Sample(elapsed, extra={"extract": restored, "recovery": elapsed - restored})
    finally:
        stop_server(pgdata)
        shutil.rmtree(pgdata, ignore_errors=True)


def case_restores(cluster: Cluster, runs: int) -> dict[str, list[c.Sample]]:
    """Restore the newest backup of each tool plus all archived WAL ``runs`` times, interleaved."""
    cases = {
        "opskit restore --pitr": lambda pgdata: opskit_restore(cluster, pgdata),
        "pgbackrest restore": lambda pgdata: pgbackrest_restore(cluster, pgdata),
    }
    samples: dict[str, list[c.Sample]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(runs):
        for index, name in enumerate(names[round_ % len(names) :] + names[: round_ % len(names)]):
            pgdata = cluster.root / f"restore-{round_}-{index}"
            sample = cases[name](pgdata)
            samples[name].append(sample)
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in sample.extra.items())
            print(f"  restore {name}: {sample.seconds:.1f} s ({phases})", flush=True)
    return samples


# --------------------------------------------------------------------------- the report


def _row(
    case: str, name: str, samples: Sequence[c.Sample], ratio: str = "", target: str = "", ok: str = ""
) -> list[str]:
    middle = c.median(samples)
    rss = c.fmt_bytes(middle.peak_rss) if middle.peak_rss else "-"
    return [case, name, f"{middle.seconds:.1f}", c.spread(samples), rss, ratio, target, ok]


def report_backups(samples: dict[str, list[c.Sample]]) -> list[list[str]]:
    """Return the result rows of case 1 with the ratios the issue asks for."""
    opskit = c.median(samples["opskit base -> file://"]).seconds
    pgbackrest = c.median(samples["pgbackrest full -> posix"]).seconds
    floor = c.median(samples["pg_basebackup > /dev/null"]).seconds
    rows = [
        _row(
            "1",
            "opskit base -> file://",
            samples["opskit base -> file://"],
            f"{opskit / pgbackrest:.2f}x pgbr, {opskit / floor:.2f}x floor",
            "<=1.0x, <=1.3x",
            f"{c.verdict(opskit / pgbackrest, 1.0)}, {c.verdict(opskit / floor, 1.3)}",
        ),
        _row("1", "pgbackrest full -> posix", samples["pgbackrest full -> posix"]),
        _row("1", "pg_basebackup > /dev/null", samples["pg_basebackup > /dev/null"]),
    ]
    if "opskit base -> s3 (moto)" in samples:
        s3 = c.median(samples["opskit base -> s3 (moto)"]).seconds
        rows.append(
            _row(
                "1",
                "opskit base -> s3 (moto)",
                samples["opskit base -> s3 (moto)"],
                f"{s3 / pgbackrest:.2f}x pgbr, {s3 / floor:.2f}x floor",
                "(information)",
                "",
            )
        )
    return rows


def report_stream(result: dict[str, float]) -> list[list[str]]:
    """Return the result row of case 2: the max archive lag against one segment."""
    lag = result["max_lag"] / SEGMENT
    return [
        [
            "2",
            f"opskit wal stream, pgbench {result['seconds']:.0f} s, {c.fmt_bytes(result['written'])} WAL",
            f"{result['catch_up']:.1f} catch-up",
            f"median lag {c.fmt_bytes(result['median_lag'])}",
            c.fmt_bytes(result["peak_rss"]),
            f"max lag {c.fmt_bytes(result['max_lag'])} = {lag:.2f} seg "
            f"(whole segments only: {result['max_segment_lag'] / SEGMENT:.2f} seg)",
            "<1 seg",
            c.verdict(lag, 0.999),
        ]
    ]


def report_restores(
    samples: dict[str, list[c.Sample]], small: c.Sample | None, args: argparse.Namespace
) -> list[list[str]]:
    """Return the result rows of case 3: the wall-time ratio and opskit's peak RSS at two sizes."""
    opskit = c.median(samples["opskit restore --pitr"])
    pgbackrest = c.median(samples["pgbackrest restore"]).seconds
    ratio = opskit.seconds / pgbackrest
    rows = [
        _row(
            "3",
            f"opskit restore --pitr --latest --start ({args.scale:g} GB)",
            samples["opskit restore --pitr"],
            f"{ratio:.2f}x pgbr",
            "<=1.2x",
            c.verdict(ratio, 1.2),
        ),
        _row("3", "pgbackrest restore + start to promotion", samples["pgbackrest restore"]),
    ]
    if small is not None and small.peak_rss:
        growth = opskit.peak_rss / small.peak_rss
        rows.append(
            _row(
                "3",
                f"opskit restore --pitr ({args.rss_scale:g} GB)",
                [small],
                f"RSS {growth:.2f}x at {args.scale / args.rss_scale:.0f}x data",
                "flat (<=1.2x)",
                c.verdict(growth, 1.2),
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run the cases, print the machine, the phases and a Markdown results table (cases in order 1, 3, 2)."""
    args = parse_args(argv)
    if shutil.which("pgbackrest") is None:
        sys.exit("bench/pitr.py: pgbackrest is not installed, and it is the baseline: apt-get install pgbackrest")
    c.print_machine(c.machine())
    rows: dict[int, list[list[str]]] = {1: [], 2: [], 3: []}
    notes: list[str] = []
    restores: dict[str, list[c.Sample]] = {}
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(c.moto_server()) if 1 in args.cases else None
        print(f"cluster: {args.scale:g} GB of bench/dataset.py data (seed {args.seed})", flush=True)
        cluster = stack.enter_context(archiving_cluster(args.scale, args.seed, endpoint))
        if 1 in args.cases:
            backups = case_backups(cluster, args.runs, endpoint is not None)
            rows[1] = report_backups(backups)
        elif 3 in args.cases:
            opskit_backup(cluster, "app")
            pgbackrest_backup(cluster)
        if 3 in args.cases:
            # Before case 2: the restores replay this run's WAL and not the streaming run's as well.
            print(f"case 3: pgbench {args.pgbench_seconds} s, {args.clients} clients, then restores", flush=True)
            load = write_load_and_archive(cluster, args.clients, args.pgbench_seconds)
            notes.append(
                f"case 3 replays the WAL of a {args.pgbench_seconds} s pgbench run ({c.fmt_bytes(load['written'])}); "
                f"the archive_command (opskit push && pgbackrest archive-push) needed {load['archive_drain']:.0f} s "
                "after pgbench stopped to archive all of it"
            )
            restores = case_restores(cluster, args.runs)
        if 2 in args.cases:
            print(f"case 2: opskit wal stream while pgbench writes for {args.stream_seconds} s", flush=True)
            rows[2] = report_stream(case_stream(cluster, args.clients, args.stream_seconds))
    if 3 in args.cases:
        small_seconds = min(args.pgbench_seconds, 30)
        print(
            f"case 3, RSS: a {args.rss_scale:g} GB cluster, pgbench {small_seconds} s, one opskit restore", flush=True
        )
        with archiving_cluster(args.rss_scale, args.seed, None) as little:
            small_backup = opskit_backup(little, "app")
            write_load_and_archive(little, args.clients, small_seconds)
            small = opskit_restore(little, little.root / "restore-small")
        rows[3] = report_restores(restores, small, args)
        rows[3].append(_row("3", f"(opskit base backup of the {args.rss_scale:g} GB cluster)", [small_backup]))
    print()
    c.print_table(
        ["case", "what", "median s", "spread s", "peak RSS", "ratio", "target", "verdict"],
        [row for case in (1, 2, 3) for row in rows[case]],
    )
    for note in notes:
        print(f"- {note}")
    print("load average at the end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
