"""Shared pieces of the benchmark scripts: machine facts, timing, peak RSS, medians, a moto server.

Benchmarks are not tests: they print numbers and ratios against baselines, and never
fail a build. Each script runs every case ``--runs`` times (3 by default) and prints the
median; ``--quick`` runs a small database once, to check the scripts still work.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import psycopg  # noqa: E402

from tests.servers import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, free_port, s3_client, start_server  # noqa: E402

PG_HOST = "127.0.0.1"
PG_USER = "postgres"
ADMIN_DSN = f"host={PG_HOST} user={PG_USER} dbname=postgres"
MiB = 1024 * 1024


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    """Return the facts printed with every result: cores, memory, CPU, PostgreSQL and opskit versions."""
    import opskit

    memory = "?"
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    load = os.getloadavg()
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "postgresql": str(row[0]) if row else "?",
        "pg_dump": subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout.strip(),
        "opskit": opskit.__version__,
        "python": platform.python_version(),
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


def print_machine(facts: dict[str, str]) -> None:
    """Print the machine facts as an indented block."""
    print("machine:")
    for key, value in facts.items():
        print(f"  {key}: {value}")


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One timed run: wall seconds, the measured process's peak RSS (bytes, 0 if not measured), extras."""

    seconds: float
    peak_rss: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    stdout: str = ""
    cpu: dict[str, float] = field(default_factory=dict)


def _vm_hwm(pid: int) -> int:
    """Return the peak resident set size (VmHWM) of ``pid`` in bytes, or 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = True,
    cpu_database: str | None = None,
    servers: Mapping[str, int] | None = None,
) -> Sample:
    """Run ``argv``; return its wall time and ITS OWN peak RSS (not its children's).

    ``wait4``'s rusage would fold in pg_dump's and pg_restore's peaks, so VmHWM of the
    process itself is polled from /proc instead (it only grows, so the last reading
    before exit is the peak, up to the polling interval). With ``cpu_database``, the CPU
    seconds of the process, its children and that database's backends are in
    ``Sample.cpu`` (see CpuSampler). ``servers`` names long-running processes serving the run
    (moto): the CPU each spent while it ran is added to ``Sample.cpu`` under its name, since on
    2 cores an object store on loopback takes its CPU from the run. Raises RuntimeError when it
    fails.
    """
    servers = dict(servers or {})
    servers_before = {name: server_cpu(pid) for name, pid in servers.items()}
    started = time.perf_counter()
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
    )
    sampler = CpuSampler(cpu_database) if cpu_database is not None else None
    if sampler is not None:
        sampler.start(process.pid)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _vm_hwm(process.pid))
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, stderr = process.communicate()
    elapsed = time.perf_counter() - started
    done.set()
    poller.join()
    cpu = sampler.stop() if sampler is not None else {}
    for name, pid in servers.items():
        cpu[name] = max(0.0, server_cpu(pid) - servers_before[name])
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {process.returncode}:\n{stderr[-3000:]}")
    return Sample(elapsed, peak, stdout=stdout or "", cpu=cpu)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """Return the CPU seconds ``pid`` (a server the bench started) has used so far, 0.0 when it is gone."""
    reading = _cpu_seconds(pid)
    return reading[1] if reading is not None else 0.0


def _cpu_seconds(pid: int) -> tuple[str, float] | None:
    """Return (comm, utime + stime in seconds) of ``pid`` from /proc/<pid>/stat, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces: the fields after the last ')' are fixed.
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _descendants(pid: int) -> list[int]:
    """Return every descendant pid of ``pid`` (from /proc/<pid>/task/*/children), best effort."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            stack.extend(children)
    return found


class CpuSampler:
    """Polls the CPU time of a process tree and of the PostgreSQL backends serving a database.

    Every 50 ms: utime+stime of the measured process, of each descendant (pg_dump,
    pg_restore, psql; grouped by program name), and of each backend of ``database`` from
    ``pg_stat_activity`` (grouped as ``backend:<application_name>``; parallel workers
    count for their leader's application). A process's last reading before it exits is
    kept, so a total is short by at most one polling interval per process.
    """

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._root = 0

    def start(self, root: int) -> None:
        """Start polling the tree under ``root`` (and the backends) in a thread."""
        self._root = root
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Stop polling; return CPU seconds by group (``opskit``, ``pg_dump``, ``backend:pg_dump``, ...)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        groups: dict[str, float] = {}
        for group, seconds in self.last.values():
            groups[group] = groups.get(group, 0.0) + seconds
        return groups

    def _poll(self) -> None:
        conn = None
        if self.database is not None:
            conn = psycopg.connect(ADMIN_DSN, autocommit=True)
        try:
            while not self._done.is_set():
                self._sample(conn)
                self._done.wait(0.05)
            self._sample(conn)
        finally:
            if conn is not None:
                conn.close()

    def _sample(self, conn: psycopg.Connection[Any] | None) -> None:
        for pid in [self._root, *_descendants(self._root)]:
            reading = _cpu_seconds(pid)
            if reading is not None:
                # The CLI shows up as its interpreter; every other program under its own name.
                name = "opskit" if reading[0].startswith("python") else reading[0]
                self.last[pid] = (name, reading[1])
        if conn is None or self.database is None:
            return
        rows = conn.execute(
            "SELECT a.pid, coalesce(nullif(l.application_name, ''), nullif(a.application_name, ''), a.backend_type)"
            " FROM pg_stat_activity a LEFT JOIN pg_stat_activity l ON l.pid = a.leader_pid"
            " WHERE a.datname LIKE %s AND a.pid <> pg_backend_pid()",
            (self.database + "%",),
        ).fetchall()
        for pid, application in rows:
            reading = _cpu_seconds(int(pid))
            if reading is not None:
                self.last[int(pid)] = (f"backend:{application}", reading[1])


def timed(fn: Callable[[], object]) -> Sample:
    """Run ``fn`` and return its wall time."""
    started = time.perf_counter()
    fn()
    return Sample(time.perf_counter() - started)


def median(samples: Sequence[Sample]) -> Sample:
    """Return the median wall time and the median peak RSS of ``samples`` (extras: medians too)."""
    keys = samples[0].extra.keys()
    cpu_keys = sorted({k for s in samples for k in s.cpu})
    return Sample(
        statistics.median(s.seconds for s in samples),
        int(statistics.median(s.peak_rss for s in samples)),
        {k: statistics.median(s.extra.get(k, 0.0) for s in samples) for k in keys},
        cpu={k: statistics.median(s.cpu.get(k, 0.0) for s in samples) for k in cpu_keys},
    )


def spread(samples: Sequence[Sample]) -> str:
    """Return the wall-time range of ``samples`` as ``min-max`` seconds (how noisy the runs were)."""
    walls = [s.seconds for s in samples]
    return f"{min(walls):.2f}-{max(walls):.2f}"


def print_cpu(title: str, sample: Sample, stages: dict[str, float] | None = None) -> None:
    """Print where the CPU went in one case: per process group, and opskit's own stages when known."""
    if not sample.cpu and not stages:
        return
    total = sum(sample.cpu.values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(sample.cpu.items(), key=lambda kv: -kv[1]) if v >= 0.01)
    print(f"  cpu s, {title} (wall {sample.seconds:.2f}): total {total:.2f}: {parts}")
    if stages:
        print("    opskit stages: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))


def fmt_bytes(count: float) -> str:
    """Return ``count`` bytes as MiB with one decimal."""
    return f"{count / MiB:.1f} MiB"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a Markdown table (so results paste straight into docs/benchmarks.md)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def verdict(value: float, limit: float) -> str:
    """Return ``ok`` or ``MISSED`` for a ratio that must stay at or below ``limit``."""
    return "ok" if value <= limit else "MISSED"


# --------------------------------------------------------------------------- databases


DEFAULT_SCALES = {"prod": (0.5, 0.1), "pgbench": (70, 20)}


def database_arguments(
    doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse the options the backup and restore benchmarks share (--data, --scale, --rss-scale, --runs, ...).

    ``--data prod`` (the default) is ``bench/dataset.py``'s production-like database,
    ``--scale`` in GB on disk; ``--data pgbench`` is ``pgbench -i -s SCALE``.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=sorted(DEFAULT_SCALES), default="prod", help="which database (default prod)")
    parser.add_argument("--scale", type=float, help="prod: GB on disk (default 0.5); pgbench: scale (default 70)")
    parser.add_argument("--rss-scale", type=float, help="a second, smaller scale, to show peak RSS stays flat")
    parser.add_argument("--seed", type=int, default=1, help="prod: the generator's seed")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--text-mib",
        type=int,
        default=0,
        help="pgbench: add MiB of hex text to both databases (less compressible than pgbench's rows)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny database, one run: checks the script works")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    scale, rss_scale = DEFAULT_SCALES[args.data]
    args.scale = args.scale if args.scale is not None else scale
    args.rss_scale = args.rss_scale if args.rss_scale is not None else rss_scale
    if args.quick:
        args.scale, args.rss_scale, args.runs = (0.05, 0.02, 1) if args.data == "prod" else (2, 1, 1)
    return args


def ensure_database(args: argparse.Namespace, scale: float) -> str:
    """Return the cached benchmark database ``args.data`` at ``scale``, building it when missing."""
    if args.data == "prod":
        import dataset

        return dataset.ensure(scale, args.seed)
    return ensure_pgbench_database(int(scale), args.text_mib)


def describe_data(args: argparse.Namespace) -> str:
    """Return the data set as a table caption says it: ``prod 0.5 GB`` or ``pgbench -s 70``."""
    return f"prod {args.scale:g} GB (seed {args.seed})" if args.data == "prod" else f"pgbench -s {args.scale:g}"


def ensure_pgbench_database(scale: int, text_mib: int = 0) -> str:
    """Return ``opskit_bench_s<scale>[_t<text_mib>]``, created with ``pgbench -i -s scale`` unless it exists.

    ``text_mib`` adds a table ``bench_text`` of that many MiB of hex text (md5 strings):
    pgbench's blank-padded rows compress ~100x and make gzip nearly free, which hides
    what zstd saves on ordinary data. The database is cached between runs (generating
    -s 70 takes minutes); one whose ``pgbench_accounts`` does not hold ``scale * 100000``
    rows is rebuilt.
    """
    name = f"opskit_bench_s{scale}" + (f"_t{text_mib}" if text_mib else "")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists:
        try:
            with psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname={name}") as conn:
                row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
            if row and row[0] == scale * 100_000:
                return name
        except psycopg.Error:
            pass
        drop_database(name)
    print(f"creating {name} with pgbench -i -s {scale} (cached for later runs)...", flush=True)
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), "-h", PG_HOST, "-U", PG_USER, name], check=True, capture_output=True
    )
    with psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname={name}", autocommit=True) as conn:
        if text_mib:
            # 32 hex characters per md5: 32,768 rows of 1 KiB (32 of them) per MiB.
            conn.execute("CREATE TABLE bench_text (id bigint PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO bench_text SELECT i, (SELECT string_agg(md5(i::text || j::text), '') "
                "FROM generate_series(1, 32) AS j) FROM generate_series(1, %s) AS i",
                (text_mib * 1024,),
            )
        conn.execute("VACUUM ANALYZE")
    return name


def database_size(name: str) -> int:
    """Return ``pg_database_size`` of ``name`` in bytes."""
    with psycopg.connect(ADMIN_DSN) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
    return int(row[0]) if row else 0


def drop_database(name: str) -> None:
    """Drop ``name`` if it exists."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint() -> None:
    """Run CHECKPOINT (untimed), so a case does not pay for the dirty pages of the one before it."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def drop_databases_like(prefix: str) -> None:
    """Drop every database whose name starts with ``prefix``."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)).fetchall()
        ]
    for name in names:
        drop_database(name)


# --------------------------------------------------------------------------- moto and opskit


@dataclass
class S3Endpoint:
    """A running moto server and a bucket on it."""

    url: str
    bucket: str
    pid: int = 0  # moto's process: its CPU is counted as "moto" beside the run it serves

    def client(self) -> object:
        """Return a boto3 client for it."""
        return s3_client(self.url)


@contextmanager
def moto_server(bucket: str = "opskit-bench") -> Iterator[S3Endpoint]:
    """Start moto_server on a free loopback port (as the test fixtures do), make ``bucket``, stop it after."""
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="opskit-bench-moto-"))
    server = start_server(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        "/moto-api/data.json",
        log_dir,
        env={"MOTO_ALLOW_NONEXISTENT_REGION": "true"},
    )
    try:
        endpoint = S3Endpoint(server.url, bucket, server.process.pid)
        endpoint.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        yield endpoint
    finally:
        server.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def empty_bucket(endpoint: S3Endpoint) -> None:
    """Delete every object (and abort every upload) in the bench bucket, so moto's memory stays small."""
    client = endpoint.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=endpoint.bucket)  # type: ignore[attr-defined]
    for page in pages:
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=endpoint.bucket, Delete={"Objects": keys})  # type: ignore[attr-defined]


def opskit_env() -> dict[str, str]:
    """Return the environment for the opskit CLI: the repo importable, JSON logs, fake S3 credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "OPSKIT_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env |= {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return env


def write_config(
    directory: Path,
    database: str,
    storage: str,
    endpoint: S3Endpoint | None = None,
    recipients: Sequence[str] = (),
    identity_file: Path | None = None,
    level: int | None = None,
) -> Path:
    """Write an opskit.toml for target ``bench`` on ``database`` with storage ``local`` or ``s3``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(
        f"""\
        [tools]
        state_dir = "{directory / "state"}"

        [targets.bench]
        dsn = "host={PG_HOST} user={PG_USER} dbname={database}"
        storages = ["{storage}"]

        [storages.local]
        url = "file://{directory / "backups"}"
        """
    )
    if endpoint is not None:
        text += textwrap.dedent(
            f"""
            [storages.s3]
            url = "s3://{endpoint.bucket}/{database}"
            endpoint_url = "{endpoint.url}"
            region = "{S3_REGION}"
            access_key_id = "{S3_ACCESS_KEY}"
            secret_access_key = "{S3_SECRET_KEY}"
            """
        )
    if level is not None:
        text += f"\n[compression]\nlevel = {level}\n"
    if recipients:
        text += "\n[encryption]\nrecipients = [" + ", ".join(f'"{r}"' for r in recipients) + "]\n"
        if identity_file is not None:
            text += f'identity = "file:{identity_file}"\n'
    path = directory / "opskit.toml"
    path.write_text(text)
    return path


def opskit_argv(config: Path, *args: str) -> list[str]:
    """Return the command line of ``opskit --config CONFIG ARGS`` in this interpreter."""
    return [sys.executable, "-m", "opskit", "--config", str(config), *args]


def new_identity(directory: Path) -> tuple[Path, str]:
    """Write a new age identity file; return (its path, its recipient)."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    path = directory / "age.key"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return path, str(identity.to_public())
